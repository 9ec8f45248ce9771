//! The fleet connection budget's settings: `WARMPOOL_FLEET_MAX_CONNECTIONS`,
//! `WARMPOOL_FLEET_NAME` and `WARMPOOL_FLEET_STEAL_IDLE_MS`.

use std::time::Duration;

/// What marks a fleet's connections in `pg_stat_activity`: `application_name` is this prefix
/// and the fleet's name.
pub const APPLICATION_PREFIX: &str = "warmpool:";

/// The longest fleet name: PostgreSQL keeps 63 bytes of `application_name` (NAMEDATALEN - 1),
/// and the mark must survive whole or two fleets could read as one.
/// <https://www.postgresql.org/docs/current/runtime-config-logging.html#GUC-APPLICATION-NAME>
pub const MAX_NAME: usize = 63 - APPLICATION_PREFIX.len();

/// A budget of server connections shared by every environment of one fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// `WARMPOOL_FLEET_NAME`: which connections are the fleet's.
    pub name: String,
    /// `WARMPOOL_FLEET_MAX_CONNECTIONS`: the fleet's connections, all environments together.
    pub max_connections: u32,
    /// `WARMPOOL_FLEET_STEAL_IDLE_MS`: a fleet connection idle this long may be taken.
    pub steal_idle: Duration,
}

impl FleetSettings {
    /// The `application_name` every connection of the fleet carries.
    pub fn application_name(&self) -> String {
        format!("{APPLICATION_PREFIX}{}", self.name)
    }
}

/// Why a fleet name cannot be used.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME {
        return Err(format!(
            "{name:?} is longer than {MAX_NAME} characters, which application_name cannot carry \
             after {APPLICATION_PREFIX:?}"
        ));
    }
    // The characters of Lambda function names, and nothing a SQL literal must escape.
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{name:?} holds {c:?}; a fleet name takes letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// The fleet name for a function named `function`: its name, or, when that is too long for
/// the mark, its first characters and a hash of the whole, so two long names stay apart.
pub fn default_name(function: &str) -> String {
    if function.len() <= MAX_NAME {
        return function.to_owned();
    }
    // FNV-1a: stable across builds and processes, which the fleet's environments need.
    let hash = function.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let keep = MAX_NAME - 9;
    format!("{}-{:08x}", &function[..keep], hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("orders-prod_v2.eu").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a'b").unwrap_err().contains("'\\''"));
        assert!(check_name(&"x".repeat(MAX_NAME + 1)).is_err());
        assert_eq!(default_name("orders"), "orders");
        let long = "f".repeat(64);
        let other = format!("{}g", "f".repeat(63));
        let (a, b) = (default_name(&long), default_name(&other));
        assert_eq!(a.len(), MAX_NAME);
        assert!(check_name(&a).is_ok());
        assert_ne!(a, b);
        let settings = FleetSettings {
            name: a,
            max_connections: 10,
            steal_idle: Duration::from_secs(2),
        };
        assert_eq!(settings.application_name().len(), 63);
    }
}
