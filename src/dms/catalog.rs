//! Build selection (flow step 4): among the catalog's builds of a component, the ones whose
//! targets fit the device (manufacturer, model, firmware range), newest version first. Pure.

use serde::{Deserialize, Serialize};

use crate::syncml::tree::{DevDetail, DevInfo};

/// A catalog build: one component version with the devices it is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// BLAKE3 hex of the bytes.
    pub id: String,
    pub name: String,
    pub version: String,
    pub size: u64,
    pub sha256: String,
    /// Empty: any manufacturer.
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// Inclusive firmware range, compared segment by segment as numbers where they are numbers.
    pub fw_min: Option<String>,
    pub fw_max: Option<String>,
    pub created_at_ms: u64,
}

impl Build {
    /// Whether this build needs the device's firmware version (DevDetail) to decide.
    pub fn needs_firmware(&self) -> bool {
        self.fw_min.is_some() || self.fw_max.is_some()
    }
}

/// Compares dotted versions: numeric segments as numbers, others as text.
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    let seg = |s: &str| -> Vec<(u64, String)> {
        s.split(['.', '-', '_'])
            .map(|p| (p.parse::<u64>().unwrap_or(u64::MAX), p.to_string()))
            .collect()
    };
    seg(a).cmp(&seg(b))
}

/// Why no build was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoBuild {
    #[error("the catalog has no component named {0:?}")]
    UnknownComponent(String),
    #[error("no build of {name:?} fits the device ({man} {model}, firmware {fw})")]
    NoneFits {
        name: String,
        man: String,
        model: String,
        fw: String,
    },
}

/// Chooses the newest build of `name` fitting the device. Firmware constraints are checked
/// only with DevDetail known; without it, builds that need it are not chosen.
pub fn choose<'a>(
    builds: &'a [Build],
    name: &str,
    info: &DevInfo,
    detail: Option<&DevDetail>,
) -> Result<&'a Build, NoBuild> {
    let named: Vec<&Build> = builds.iter().filter(|b| b.name == name).collect();
    if named.is_empty() {
        return Err(NoBuild::UnknownComponent(name.to_string()));
    }
    let fits = |b: &&Build| {
        let man_ok = b
            .manufacturer
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(&info.man));
        let model_ok = b
            .model
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(&info.model));
        let fw_ok = match detail {
            None => !b.needs_firmware(),
            Some(d) => {
                b.fw_min
                    .as_deref()
                    .is_none_or(|min| compare_versions(&d.fw_v, min).is_ge())
                    && b.fw_max
                        .as_deref()
                        .is_none_or(|max| compare_versions(&d.fw_v, max).is_le())
            }
        };
        man_ok && model_ok && fw_ok
    };
    named
        .into_iter()
        .filter(fits)
        .max_by(|a, b| compare_versions(&a.version, &b.version))
        .ok_or_else(|| NoBuild::NoneFits {
            name: name.to_string(),
            man: info.man.clone(),
            model: info.model.clone(),
            fw: detail.map_or("unknown".to_string(), |d| d.fw_v.clone()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(v: &str, model: Option<&str>, fw: Option<(&str, &str)>) -> Build {
        Build {
            id: format!("id-{v}"),
            name: "fw".into(),
            version: v.into(),
            size: 1,
            sha256: String::new(),
            manufacturer: Some("Acme".into()),
            model: model.map(String::from),
            fw_min: fw.map(|f| f.0.to_string()),
            fw_max: fw.map(|f| f.1.to_string()),
            created_at_ms: 0,
        }
    }

    #[test]
    fn picks_the_newest_fitting_build() {
        let info = DevInfo {
            man: "ACME".into(),
            model: "M1".into(),
            ..DevInfo::default()
        };
        let builds = vec![
            build("1.9", Some("M1"), None),
            build("1.10", Some("M1"), None),
            build("2.0", Some("M2"), None),
            build("3.0", Some("M1"), Some(("5.0", "5.9"))),
        ];
        assert_eq!(choose(&builds, "fw", &info, None).unwrap().version, "1.10");
        let detail = DevDetail {
            fw_v: "5.2".into(),
            ..DevDetail::default()
        };
        assert_eq!(
            choose(&builds, "fw", &info, Some(&detail)).unwrap().version,
            "3.0"
        );
        let old = DevDetail {
            fw_v: "4.0".into(),
            ..DevDetail::default()
        };
        assert_eq!(
            choose(&builds, "fw", &info, Some(&old)).unwrap().version,
            "1.10"
        );
        let other = DevInfo {
            man: "Other".into(),
            model: "M1".into(),
            ..DevInfo::default()
        };
        assert!(matches!(
            choose(&builds, "fw", &other, None),
            Err(NoBuild::NoneFits { .. })
        ));
        assert!(matches!(
            choose(&builds, "nope", &info, None),
            Err(NoBuild::UnknownComponent(_))
        ));
    }
}
