//! The integration suite, built as one test binary: every file here starts real nodes on
//! 127.0.0.1:0 and talks to them over real sockets and TLS (or checks the source tree itself).
//!
//! One binary rather than one per file: each would link the whole node and its dependencies
//! again, which cost ~45 MiB of disk and a link step apiece. Run one area with a filter, e.g.
//! `cargo test --test it flow_5_4_2::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod admin_api;
mod callbacks;
mod cli_dms_device;
mod cli_manage;
mod connections;
mod container;
mod delivery;
mod demo;
mod dlota;
mod download;
mod emi_lists;
mod faults;
mod flow_5_4_1;
mod flow_5_4_2;
mod flow_5_4_3;
mod hardening;
mod process;
mod real_clients;
mod syncml_codec;
mod tickets;
mod tidy;
mod wbxml;
