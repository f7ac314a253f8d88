//! `scomo-ads device`'s flags made into the agents' settings (`FleetConfig`), so `main.rs`
//! only parses and calls, as for every other command.

use super::ConfigError;
use crate::cli::DeviceArgs;
use crate::device::fleet::{FleetConfig, Request};
use crate::device::{DeviceConfig, Faults, Strict};
use crate::syncml::tree::{DevDetail, DevInfo};
use crate::syncml::Encoding;

impl FleetConfig {
    /// The agent (or fleet) `device` runs, from its flags.
    pub fn from_args(args: &DeviceArgs) -> Result<Self, ConfigError> {
        let bad = |m: &str| ConfigError::Invalid(m.to_string());
        let base = DeviceConfig {
            id: args.id.clone(),
            password: args.password.clone(),
            server_id: args.server_id.clone(),
            server_password: args.server_password.clone(),
            auth: "md5".into(),
            dms_url: args.dms_url.clone(),
            ca_certs: args.cacert.clone(),
            state_path: args.state.clone(),
            info: DevInfo {
                dev_id: args.id.clone(),
                man: args.man.clone(),
                model: args.model.clone(),
                dm_v: "1.2".into(),
                lang: "en".into(),
            },
            detail: DevDetail {
                dev_typ: "simulated".into(),
                oem: args.man.clone(),
                fw_v: args.fw_version.clone(),
                sw_v: env!("CARGO_PKG_VERSION").into(),
                hw_v: "sim".into(),
                lrg_obj: true,
            },
            max_msg_size: args.max_msg_size,
            max_obj_size: args.max_obj_size,
            faults: Faults {
                fail_install: args.fail_install,
                corrupt_delivered: args.corrupt_delivered,
                drop_after_messages: args.drop_after,
                drop_sessions: args.drop_sessions,
                interrupt_downloads: args.interrupt_downloads,
                refuse_adds: false,
                cancel_downloads: args.cancel_downloads,
            },
            encoding: Encoding::parse(&args.encoding)
                .ok_or_else(|| bad("--encoding takes xml or wbxml"))?,
            dlota: args.dlota,
            strict: Strict {
                require_server_auth: args.require_server_auth,
                doctype: args.doctype,
                empty_first_nonce: args.empty_first_nonce,
                username: args.username.clone(),
                refuse_list: args.refuse_list,
                strict_writes: args.strict_writes,
            },
        };
        let request = match (&args.request, &args.request_op) {
            (Some(c), _) => Some(Request::Component(c.clone())),
            (None, Some(op)) => {
                let (o, c) = op.split_once(':').ok_or_else(|| {
                    bad("--request-op takes OPERATION:COMPONENT, e.g. install:fw")
                })?;
                Some(Request::Operation(o.to_string(), c.to_string()))
            }
            (None, None) => None,
        };
        if args.api_url.is_some() && args.api_token.is_none() {
            return Err(bad("--api-url needs --api-token or SCOMO_DMS_API_TOKEN"));
        }
        Ok(FleetConfig {
            base,
            count: args.fleet.unwrap_or(1).max(1),
            notify_listen: args.notify_listen,
            provision: args.api_url.clone().zip(args.api_token.clone()),
            request,
            inventory_first: args.inventory_first,
            delivery: args.delivery.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> DeviceArgs {
        let mut argv = vec!["scomo-ads", "device"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Device(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_become_the_agents_settings() {
        let c = FleetConfig::from_args(&parse(&[
            "--id",
            "IMEI:5",
            "--fleet",
            "3",
            "--request-op",
            "remove:fw",
            "--dlota",
            "--cancel-downloads",
            "--encoding",
            "wbxml",
            "--refuse-list",
            "--model",
            "X1",
        ]))
        .unwrap();
        assert_eq!(c.count, 3);
        assert_eq!(c.base.info.model, "X1");
        assert!(c.base.dlota && c.base.faults.cancel_downloads && c.base.strict.refuse_list);
        assert_eq!(c.base.encoding, Encoding::Wbxml);
        assert!(
            matches!(c.request, Some(Request::Operation(ref o, ref n)) if o == "remove" && n == "fw")
        );
        let e = FleetConfig::from_args(&parse(&["--request-op", "remove"])).unwrap_err();
        assert!(e.to_string().contains("OPERATION:COMPONENT"), "{e}");
        let e = FleetConfig::from_args(&parse(&["--api-url", "https://x"]));
        assert!(e.is_err_and(|e| e.to_string().contains("--api-token")));
    }
}
