//! Session tests over in-memory streams (`tokio::io::duplex`) and one real loopback
//! TCP connection, against an in-memory [`Deliver`](crate::Deliver).

mod support;

mod bdat;
mod commands;
mod lifecycle;
mod limits;
mod message;
mod probe;
mod starttls;
mod transaction;
