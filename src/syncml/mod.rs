//! SyncML DM 1.2: the wire vocabulary the DMS and the device agent share
//! (see `../shared/OMA-DM-NOTES.md`). Pure: no I/O, no HTTP, no clock.
//!
//! - [`message`]: the typed model of a message and its commands.
//! - [`codec`]: XML decode (bounded, entity-free) and canonical encode.
//! - [`codes`]: status and alert codes with the spec's numbers.
//! - [`auth`]: basic and MD5 digest credentials, nonces.
//! - [`pkg0`]: the package 0 notification.
//! - [`large_object`]: splitting an object over messages and bounded reassembly.
//! - [`tree`]: a small DM tree with DevInfo and DevDetail.

pub mod auth;
pub mod codec;
pub mod codes;
pub mod large_object;
pub mod message;
pub mod pkg0;
pub mod tree;

/// Content type of SyncML DM XML messages.
pub const CONTENT_TYPE: &str = "application/vnd.syncml.dm+xml";
