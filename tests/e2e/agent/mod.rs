//! Agent end-to-end tests.
