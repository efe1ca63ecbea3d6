//! End-to-end tests: the real `ferry-receiver` and `ferry-agent` binaries,
//! started as processes on `127.0.0.1:0`, spoken to over real sockets, with
//! real files and real faults. One test binary; one module per area.

mod agent;
mod fleet;
mod hostile;
mod operator;
mod receiver;
mod reliability;
mod scaleout;
