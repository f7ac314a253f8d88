//! scomo-ads: an Alternate Download Server (ADS) for OMA DM SCOMO software delivery.
//!
//! # Layout
//!
//! - [`ads`]: the download node. `ads::download` is the hot path (`GET|HEAD /d/{token}`:
//!   token check, ticket lookup, RFC 9110 ranges, streamed body from the chunk cache);
//!   `ads::admin` the admin API (components, tickets, metrics); `ads::store` SQLite and the
//!   content-addressed object files; `ads::content` the ingest (over [`content`]);
//!   `ads::token` the self-authenticating URL token; `ads::tickets` minting and lookup;
//!   `ads::cache` the moka chunk cache.
//! - [`syncml`]: SyncML DM 1.2 wire vocabulary (messages, XML and WBXML codecs, auth, package
//!   0, large objects, DM tree); pure, no I/O.
//! - [`scomo`]: the SCOMO 1.0 model (paths, operations, states, result codes); pure.
//! - [`dlota`]: OMA Download OTA 1.0, the second alternate mechanism: download descriptors,
//!   install-notify reports and their SCOMO result codes; pure.
//! - [`device`]: the device agent: DM client, SCOMO tree, simulated operations, package 0 listener.
//! - [`dms`]: the minimal OMA DM server: session engine, jobs, catalog, EMI API, package 0.
//! - [`net`]: listeners shared by every server: TLS setup, the accept loop with connection cap
//!   and timeouts, graceful shutdown.
//! - [`cli`]: clap definitions of every subcommand and flag (no logic).
//! - [`client`]: the ADS admin / DMS EMI API client used by `publish`, `mint` and the
//!   management commands; [`manage`] those commands (`tickets`, `jobs`, ...), [`table`] how
//!   they print for a person.
//! - [`stack`]: ADS + DMS wired together in one process (`up`, `demo`).
//! - [`demo`]: every flow on loopback, checked against the seed steps, as a table.
//! - [`content`]: streamed, hash-verified upload receipt (temp file, BLAKE3 + SHA-256, limits),
//!   shared by the ADS's component store and the DMS's catalog.
//! - [`config`]: the one configuration tree (defaults < TOML < env < flags).
//! - [`sqlite`]: the one way SQLite is opened (WAL, busy timeout, durability by name).
//! - [`webhook`]: Standard Webhooks signing, the durable outbox and the retrying dispatcher,
//!   shared by the ADS callbacks and the DMS webhooks.
//! - [`paging`]: `limit` and `cursor` of every list endpoint, the ADS's and the DMS's.
//! - [`datadir`]: one process per data directory (an exclusive lock).
//! - [`secrets`]: secrets generated at first start, mode 0600, never logged.
//!
//! See `ARCHITECTURE.md` for the request walk-through and the invariants.

pub mod ads;
pub mod cli;
pub mod client;
pub mod config;
pub mod content;
pub mod datadir;
pub mod demo;
pub mod device;
pub mod dlota;
pub mod dms;
pub mod manage;
pub mod net;
pub mod paging;
pub mod scomo;
pub mod secrets;
pub mod sqlite;
pub mod stack;
pub mod syncml;
pub mod table;
pub mod webhook;
