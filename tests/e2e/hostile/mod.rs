//! Hostile producers, devices and clients (issue 13): one test per class of
//! hole, named after it, each failing on a build that has the hole.

mod receiver;
