//! The device agent: a DM client with DevInfo, DevDetail and the SCOMO tree, persisted to a
//! state file; it answers package 0 notifications, opens sessions on its own to ask for
//! components or operations and to report results, and simulates SCOMO operations with the
//! right state transitions and result codes (with fault injection for the failure paths).

pub mod agent;
pub mod dlota;
pub mod download;
pub mod fleet;
pub mod state;

pub use agent::{Agent, DeviceConfig, DeviceError, Faults, Strict};
