//! Database connection settings, read from libpq's two connection-string forms.
//!
//! `DATABASE_URL` takes either form, as libpq and tokio-postgres take them:
//!
//! - a URL, `postgres://user:password@host1:5432,[::1]:5433/dbname?application_name=app`, with
//!   percent-encoding anywhere and a percent-encoded Unix socket directory as a host
//!   (`%2Ftmp`);
//! - keywords, `host=db port=5432 user=app password='it\'s secret'`, each value bare or in
//!   single quotes, with `\` escaping the next character.
//!
//! What the parser accepts follows tokio-postgres 0.7's `Config::from_str`, which the extension
//! used before, so a connection string that worked keeps working. The exceptions are refused
//! with the option's name: the keepalive, `tcp_user_timeout`, `sslnegotiation` and
//! `load_balance_hosts` options, which the extension's connection does not implement; a setting
//! that is accepted and then ignored would be worse than one refused. `sslmode` takes
//! all five libpq values, where tokio-postgres stopped at `require`.
//!
//! Neither `Debug` nor an error ever shows the password: errors name the option at fault, never
//! its value.

use std::ffi::OsStr;
use std::fmt;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::settings::{SslMode, DEFAULT_PORT};

/// Where to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or an IP address.
    Tcp(String),
    /// The directory holding the server's Unix socket, as libpq reads a host starting with `/`.
    Unix(PathBuf),
}

/// libpq's `channel_binding`: whether SCRAM authentication binds itself to the TLS channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when the server offers it over TLS. The default.
    Prefer,
    /// Fail the connection unless the server binds.
    Require,
}

/// libpq's `target_session_attrs`: what the server found must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// Any server will do. The default.
    Any,
    /// The session must accept writes (`transaction_read_only` is `off`).
    ReadWrite,
    /// The session must be read-only.
    ReadOnly,
}

/// Options tokio-postgres took that the extension's connection does not implement.
const UNSUPPORTED: [&str; 7] = [
    "sslnegotiation",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "load_balance_hosts",
];

/// A connection string that cannot be used. The message names the option or the position at
/// fault and never repeats a value, so a password cannot leak through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgConfigError {
    /// An option neither libpq nor the extension knows.
    UnknownOption(String),
    /// An option libpq knows that the extension's connection does not implement.
    Unsupported(&'static str),
    /// A known option with a value it does not take.
    InvalidValue(&'static str),
    /// A malformed string: what was wrong, and where when that is known.
    Syntax(String),
}

impl fmt::Display for PgConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid connection string: ")?;
        match self {
            PgConfigError::UnknownOption(key) => write!(f, "unknown option `{key}`"),
            PgConfigError::Unsupported(key) => write!(f, "option `{key}` is not supported"),
            PgConfigError::InvalidValue(key) => write!(f, "invalid value for option `{key}`"),
            PgConfigError::Syntax(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for PgConfigError {}

/// Connection settings: where the server is, who to log in as, and how.
///
/// Every field starts unset (or at libpq's default) and is filled in by the connection string,
/// the `PG*` variables, and the credentials provider, in that order of precedence.
#[derive(Clone, PartialEq, Eq)]
pub struct PgConfig {
    user: Option<String>,
    password: Option<Vec<u8>>,
    dbname: Option<String>,
    options: Option<String>,
    application_name: Option<String>,
    ssl_mode: SslMode,
    hosts: Vec<Host>,
    hostaddrs: Vec<IpAddr>,
    ports: Vec<u16>,
    connect_timeout: Option<Duration>,
    target_session_attrs: TargetSessionAttrs,
    channel_binding: ChannelBinding,
}

impl Default for PgConfig {
    fn default() -> PgConfig {
        PgConfig::new()
    }
}

impl PgConfig {
    /// Nothing set: no host, no port, no user; `sslmode` `prefer` and `channel_binding`
    /// `prefer`, as in libpq.
    pub fn new() -> PgConfig {
        PgConfig {
            user: None,
            password: None,
            dbname: None,
            options: None,
            application_name: None,
            ssl_mode: SslMode::Prefer,
            hosts: Vec::new(),
            hostaddrs: Vec::new(),
            ports: Vec::new(),
            connect_timeout: None,
            target_session_attrs: TargetSessionAttrs::Any,
            channel_binding: ChannelBinding::Prefer,
        }
    }

    /// The user to log in as.
    pub fn user(&mut self, user: impl Into<String>) -> &mut PgConfig {
        self.user = Some(user.into());
        self
    }

    /// The user, if set.
    pub fn get_user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password. Bytes, since a URL's percent-encoding can spell any byte.
    pub fn password(&mut self, password: impl AsRef<[u8]>) -> &mut PgConfig {
        self.password = Some(password.as_ref().to_vec());
        self
    }

    /// The password, if set.
    pub fn get_password(&self) -> Option<&[u8]> {
        self.password.as_deref()
    }

    /// The database to connect to.
    pub fn dbname(&mut self, dbname: impl Into<String>) -> &mut PgConfig {
        self.dbname = Some(dbname.into());
        self
    }

    /// The database, if set.
    pub fn get_dbname(&self) -> Option<&str> {
        self.dbname.as_deref()
    }

    /// Command-line options for the server (`-c name=value`), sent in the startup message.
    pub fn options(&mut self, options: impl Into<String>) -> &mut PgConfig {
        self.options = Some(options.into());
        self
    }

    /// The server options, if set.
    pub fn get_options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    /// The `application_name` the server shows in `pg_stat_activity`.
    pub fn application_name(&mut self, application_name: impl Into<String>) -> &mut PgConfig {
        self.application_name = Some(application_name.into());
        self
    }

    /// The application name, if set.
    pub fn get_application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// The TLS mode.
    pub fn ssl_mode(&mut self, ssl_mode: SslMode) -> &mut PgConfig {
        self.ssl_mode = ssl_mode;
        self
    }

    /// The TLS mode; `prefer` unless set.
    pub fn get_ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }

    /// Adds a host, tried in order after those already added. One starting with `/` is a Unix
    /// socket directory.
    pub fn host(&mut self, host: impl Into<String>) -> &mut PgConfig {
        let host = host.into();
        if host.starts_with('/') {
            self.hosts.push(Host::Unix(PathBuf::from(host)));
        } else {
            self.hosts.push(Host::Tcp(host));
        }
        self
    }

    /// Adds a Unix socket directory, which need not be UTF-8.
    pub fn host_path(&mut self, dir: impl Into<PathBuf>) -> &mut PgConfig {
        self.hosts.push(Host::Unix(dir.into()));
        self
    }

    /// The hosts, in the order they are tried.
    pub fn get_hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Adds a host's numeric address, as libpq's `hostaddr`: the connection goes to the address,
    /// while TLS checks the certificate against the host name. As in libpq, there are none, or
    /// one per host.
    pub fn hostaddr(&mut self, addr: IpAddr) -> &mut PgConfig {
        self.hostaddrs.push(addr);
        self
    }

    /// The host addresses, in the order of the hosts they go with.
    pub fn get_hostaddrs(&self) -> &[IpAddr] {
        &self.hostaddrs
    }

    /// Adds a port. As in libpq: none means 5432, one applies to every host, otherwise there is
    /// one per host.
    pub fn port(&mut self, port: u16) -> &mut PgConfig {
        self.ports.push(port);
        self
    }

    /// The ports.
    pub fn get_ports(&self) -> &[u16] {
        &self.ports
    }

    /// The bound on each attempt to reach a server.
    pub fn connect_timeout(&mut self, connect_timeout: Duration) -> &mut PgConfig {
        self.connect_timeout = Some(connect_timeout);
        self
    }

    /// The connect timeout, if set.
    pub fn get_connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// What the server found must allow.
    pub fn target_session_attrs(&mut self, attrs: TargetSessionAttrs) -> &mut PgConfig {
        self.target_session_attrs = attrs;
        self
    }

    /// The required session attributes; `any` unless set.
    pub fn get_target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// Whether SCRAM binds to the TLS channel.
    pub fn channel_binding(&mut self, channel_binding: ChannelBinding) -> &mut PgConfig {
        self.channel_binding = channel_binding;
        self
    }

    /// The channel binding; `prefer` unless set.
    pub fn get_channel_binding(&self) -> ChannelBinding {
        self.channel_binding
    }

    /// Sets one option by its libpq keyword. Both string forms end here, so they accept the same
    /// keywords and values.
    fn param(&mut self, key: &str, value: &str) -> Result<(), PgConfigError> {
        use PgConfigError::InvalidValue;
        match key {
            "user" => {
                self.user(value);
            }
            "password" => {
                self.password(value);
            }
            "dbname" => {
                self.dbname(value);
            }
            "options" => {
                self.options(value);
            }
            "application_name" => {
                self.application_name(value);
            }
            "sslmode" => {
                let mode = value.parse().map_err(|_| InvalidValue("sslmode"))?;
                self.ssl_mode(mode);
            }
            "host" => {
                for host in value.split(',') {
                    self.host(host);
                }
            }
            "hostaddr" => {
                for addr in value.split(',') {
                    let addr = addr.parse().map_err(|_| InvalidValue("hostaddr"))?;
                    self.hostaddr(addr);
                }
            }
            "port" => {
                for port in value.split(',') {
                    let port = if port.is_empty() {
                        DEFAULT_PORT
                    } else {
                        port.parse().map_err(|_| InvalidValue("port"))?
                    };
                    self.port(port);
                }
            }
            "connect_timeout" => {
                // libpq: zero or less means no bound.
                let secs: i64 = value.parse().map_err(|_| InvalidValue("connect_timeout"))?;
                if secs > 0 {
                    self.connect_timeout(Duration::from_secs(secs.unsigned_abs()));
                }
            }
            "target_session_attrs" => {
                let attrs = match value {
                    "any" => TargetSessionAttrs::Any,
                    "read-write" => TargetSessionAttrs::ReadWrite,
                    "read-only" => TargetSessionAttrs::ReadOnly,
                    _ => return Err(InvalidValue("target_session_attrs")),
                };
                self.target_session_attrs(attrs);
            }
            "channel_binding" => {
                let binding = match value {
                    "disable" => ChannelBinding::Disable,
                    "prefer" => ChannelBinding::Prefer,
                    "require" => ChannelBinding::Require,
                    _ => return Err(InvalidValue("channel_binding")),
                };
                self.channel_binding(binding);
            }
            other => {
                return Err(match UNSUPPORTED.iter().find(|k| **k == other) {
                    Some(known) => PgConfigError::Unsupported(known),
                    None => PgConfigError::UnknownOption(other.to_owned()),
                })
            }
        }
        Ok(())
    }
}

impl FromStr for PgConfig {
    type Err = PgConfigError;

    /// A URL when `s` starts with `postgres://` or `postgresql://`, keywords otherwise.
    fn from_str(s: &str) -> Result<PgConfig, PgConfigError> {
        match ["postgres://", "postgresql://"]
            .iter()
            .find_map(|prefix| s.strip_prefix(prefix))
        {
            Some(rest) => UrlParser::parse(rest),
            None => KeywordParser::parse(s),
        }
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted;
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("<redacted>")
            }
        }
        f.debug_struct("PgConfig")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .field("dbname", &self.dbname)
            .field("options", &self.options)
            .field("application_name", &self.application_name)
            .field("ssl_mode", &self.ssl_mode)
            .field("hosts", &self.hosts)
            .field("hostaddrs", &self.hostaddrs)
            .field("ports", &self.ports)
            .field("connect_timeout", &self.connect_timeout)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("channel_binding", &self.channel_binding)
            .finish()
    }
}

/// The keyword form: `key = value` pairs separated by white space.
struct KeywordParser<'a> {
    s: &'a str,
    it: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl<'a> KeywordParser<'a> {
    fn parse(s: &'a str) -> Result<PgConfig, PgConfigError> {
        let mut parser = KeywordParser {
            s,
            it: s.char_indices().peekable(),
        };
        let mut config = PgConfig::new();
        while let Some((key, value)) = parser.parameter()? {
            config.param(key, &value)?;
        }
        Ok(config)
    }

    fn parameter(&mut self) -> Result<Option<(&'a str, String)>, PgConfigError> {
        self.skip_ws();
        let key = self.take_while(|c| !c.is_whitespace() && c != '=');
        if key.is_empty() {
            return Ok(None);
        }
        self.skip_ws();
        self.eat('=')?;
        self.skip_ws();
        let value = if self.eat_if('\'') {
            let value = self.quoted_value()?;
            self.eat('\'')?;
            value
        } else {
            self.bare_value()?
        };
        Ok(Some((key, value)))
    }

    fn skip_ws(&mut self) {
        self.take_while(char::is_whitespace);
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = match self.it.peek() {
            Some(&(i, _)) => i,
            None => return "",
        };
        loop {
            match self.it.peek() {
                Some(&(_, c)) if f(c) => {
                    self.it.next();
                }
                Some(&(i, _)) => return &self.s[start..i],
                None => return &self.s[start..],
            }
        }
    }

    /// Consumes `target`. The error gives the position but not the character found there,
    /// which could belong to a password.
    fn eat(&mut self, target: char) -> Result<(), PgConfigError> {
        match self.it.next() {
            Some((_, c)) if c == target => Ok(()),
            Some((i, _)) => Err(PgConfigError::Syntax(format!(
                "expected `{target}` at byte {i}"
            ))),
            None => Err(PgConfigError::Syntax(format!(
                "expected `{target}` but the string ended"
            ))),
        }
    }

    fn eat_if(&mut self, target: char) -> bool {
        match self.it.peek() {
            Some(&(_, c)) if c == target => {
                self.it.next();
                true
            }
            _ => false,
        }
    }

    /// An unquoted value: up to the next white space, `\` escaping the character after it.
    fn bare_value(&mut self) -> Result<String, PgConfigError> {
        let mut value = String::new();
        while let Some(&(_, c)) = self.it.peek() {
            if c.is_whitespace() {
                break;
            }
            self.it.next();
            if c == '\\' {
                if let Some((_, escaped)) = self.it.next() {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        if value.is_empty() {
            // An empty value needs quotes: `password=''`.
            return Err(PgConfigError::Syntax(
                "a value is missing (write an empty one as '')".into(),
            ));
        }
        Ok(value)
    }

    /// A value inside single quotes, up to (not including) the closing quote.
    fn quoted_value(&mut self) -> Result<String, PgConfigError> {
        let mut value = String::new();
        while let Some(&(_, c)) = self.it.peek() {
            if c == '\'' {
                return Ok(value);
            }
            self.it.next();
            if c == '\\' {
                if let Some((_, escaped)) = self.it.next() {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        Err(PgConfigError::Syntax("a quoted value is not closed".into()))
    }
}

/// The URL form, after its scheme. As loose as libpq's and tokio-postgres' own parsers: every
/// part is optional.
struct UrlParser<'a> {
    s: &'a str,
    config: PgConfig,
}

impl<'a> UrlParser<'a> {
    fn parse(s: &'a str) -> Result<PgConfig, PgConfigError> {
        let mut parser = UrlParser {
            s,
            config: PgConfig::new(),
        };
        parser.credentials()?;
        parser.hosts()?;
        parser.path()?;
        parser.params()?;
        Ok(parser.config)
    }

    /// The text before the first of `end`, consumed; `None`, consuming nothing, without one.
    fn take_until(&mut self, end: &[char]) -> Option<&'a str> {
        let pos = self.s.find(end)?;
        let (head, tail) = self.s.split_at(pos);
        self.s = tail;
        Some(head)
    }

    fn take_all(&mut self) -> &'a str {
        std::mem::take(&mut self.s)
    }

    /// Drops the one-byte delimiter `take_until` stopped at.
    fn eat_byte(&mut self) {
        self.s = &self.s[1..];
    }

    /// `user[:password]@`. The password is bytes; the user must decode to UTF-8.
    fn credentials(&mut self) -> Result<(), PgConfigError> {
        let Some(creds) = self.take_until(&['@']) else {
            return Ok(());
        };
        self.eat_byte();
        let (user, password) = match creds.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (creds, None),
        };
        self.config.user(decode_utf8(user, "user")?);
        if let Some(password) = password {
            self.config.password(percent_decode(password.as_bytes()));
        }
        Ok(())
    }

    /// `host[:port]` items separated by commas; an IPv6 address in brackets.
    fn hosts(&mut self) -> Result<(), PgConfigError> {
        let hosts = match self.take_until(&['/', '?']) {
            Some(hosts) => hosts,
            None => self.take_all(),
        };
        if hosts.is_empty() {
            return Ok(());
        }
        for item in hosts.split(',') {
            let (host, port) = match item.strip_prefix('[') {
                Some(bracketed) => {
                    let (host, after) = bracketed
                        .split_once(']')
                        .ok_or(PgConfigError::InvalidValue("host"))?;
                    let port = match after.strip_prefix(':') {
                        Some(port) => Some(port),
                        None if after.is_empty() => None,
                        None => return Err(PgConfigError::InvalidValue("host")),
                    };
                    (host, port)
                }
                None => match item.split_once(':') {
                    Some((host, port)) => (host, Some(port)),
                    None => (item, None),
                },
            };
            self.host(host)?;
            let port = decode_utf8(port.unwrap_or("5432"), "port")?;
            self.config.param("port", &port)?;
        }
        Ok(())
    }

    /// `/dbname`.
    fn path(&mut self) -> Result<(), PgConfigError> {
        if !self.s.starts_with('/') {
            return Ok(());
        }
        self.eat_byte();
        let dbname = match self.take_until(&['?']) {
            Some(dbname) => dbname,
            None => self.take_all(),
        };
        if !dbname.is_empty() {
            self.config.dbname(decode_utf8(dbname, "dbname")?);
        }
        Ok(())
    }

    /// `?key=value&key=value`, each part percent-decoded.
    fn params(&mut self) -> Result<(), PgConfigError> {
        if !self.s.starts_with('?') {
            return Ok(());
        }
        self.eat_byte();
        while !self.s.is_empty() {
            let Some(key) = self.take_until(&['=']) else {
                return Err(PgConfigError::Syntax("a query parameter has no `=`".into()));
            };
            let key = decode_utf8(key, "a query parameter's name")?;
            self.eat_byte();
            let value = match self.take_until(&['&']) {
                Some(value) => {
                    self.eat_byte();
                    value
                }
                None => self.take_all(),
            };
            // As in tokio-postgres, `host` in the query is one host: a comma does not split it.
            if key == "host" {
                self.host(value)?;
            } else {
                let value = decode_utf8(value, &key)?;
                self.config.param(&key, &value)?;
            }
        }
        Ok(())
    }

    /// One percent-encoded host. A socket directory may be any bytes; a host name is UTF-8.
    fn host(&mut self, encoded: &str) -> Result<(), PgConfigError> {
        let decoded = percent_decode(encoded.as_bytes());
        if decoded.first() == Some(&b'/') {
            self.config.host_path(OsStr::from_bytes(&decoded));
        } else {
            let host = String::from_utf8(decoded)
                .map_err(|_| PgConfigError::Syntax("the host is not UTF-8".into()))?;
            self.config.host(host);
        }
        Ok(())
    }
}

/// `%XY` to the byte 0xXY; a `%` not followed by two hex digits stays as it is, as the
/// `percent-encoding` crate (and so tokio-postgres) leaves it.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let (Some(hi), Some(lo)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// Percent-decodes `s`, which must then be UTF-8. `what` names the part for the error, which
/// does not show the bytes.
fn decode_utf8(s: &str, what: &str) -> Result<String, PgConfigError> {
    String::from_utf8(percent_decode(s.as_bytes()))
        .map_err(|_| PgConfigError::Syntax(format!("{what} is not UTF-8 once percent-decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> PgConfig {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} did not parse: {e}"))
    }

    fn tcp(hosts: &[&str]) -> Vec<Host> {
        hosts.iter().map(|h| Host::Tcp((*h).to_owned())).collect()
    }

    #[test]
    fn url_with_every_part() {
        let c = parse(
            "postgres://app:pw@db.example.com:6543/orders?application_name=api&options=-c%20search_path%3Dx\
             &connect_timeout=3&channel_binding=require&sslmode=verify-full&target_session_attrs=read-write",
        );
        assert_eq!(c.get_user(), Some("app"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.get_hosts(), tcp(&["db.example.com"]));
        assert_eq!(c.get_ports(), &[6543]);
        assert_eq!(c.get_dbname(), Some("orders"));
        assert_eq!(c.get_application_name(), Some("api"));
        assert_eq!(c.get_options(), Some("-c search_path=x"));
        assert_eq!(c.get_connect_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(c.get_channel_binding(), ChannelBinding::Require);
        assert_eq!(c.get_ssl_mode(), SslMode::VerifyFull);
        assert_eq!(c.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
    }

    #[test]
    fn url_parts_are_all_optional() {
        for url in ["postgres://", "postgresql://"] {
            assert_eq!(parse(url), PgConfig::new(), "{url}");
        }
        let c = parse("postgresql://db");
        assert_eq!(c.get_hosts(), tcp(&["db"]));
        // A host without a port gets libpq's.
        assert_eq!(c.get_ports(), &[5432]);
        assert_eq!(c.get_user(), None);
        assert_eq!(c.get_dbname(), None);
        let c = parse("postgres:///app?host=db&user=u");
        assert_eq!(c.get_hosts(), tcp(&["db"]));
        assert!(c.get_ports().is_empty());
        assert_eq!(c.get_dbname(), Some("app"));
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.get_ssl_mode(), SslMode::Prefer);
        assert_eq!(c.get_channel_binding(), ChannelBinding::Prefer);
        assert_eq!(c.get_connect_timeout(), None);
    }

    #[test]
    fn url_percent_decoding() {
        let c = parse("postgres://us%40er:p%40ss%3Aw%2Fd%25@h/my%20db?application_name=a%26b");
        assert_eq!(c.get_user(), Some("us@er"));
        assert_eq!(c.get_password(), Some(&b"p@ss:w/d%"[..]));
        assert_eq!(c.get_dbname(), Some("my db"));
        assert_eq!(c.get_application_name(), Some("a&b"));
        // The password may be any bytes; a `%` without two hex digits is kept.
        let c = parse("postgres://u:%FF%zz%4@h");
        assert_eq!(c.get_password(), Some(&b"\xff%zz%4"[..]));
        // A password may hold a `:`; only the first separates it from the user.
        let c = parse("postgres://u:a:b@h");
        assert_eq!(c.get_password(), Some(&b"a:b"[..]));
        // The user, the database and the option values must be UTF-8.
        for url in [
            "postgres://%FF@h",
            "postgres://h/%FF",
            "postgres://h?options=%FF",
        ] {
            url.parse::<PgConfig>().unwrap_err();
        }
    }

    #[test]
    fn url_unix_socket_directories() {
        let c = parse("postgres://u@%2Fvar%2Frun%2Fpostgresql:5433/app");
        assert_eq!(
            c.get_hosts(),
            [Host::Unix(PathBuf::from("/var/run/postgresql"))]
        );
        assert_eq!(c.get_ports(), &[5433]);
        let c = parse("postgresql:///app?host=/tmp/sock%20dir&port=5434");
        assert_eq!(c.get_hosts(), [Host::Unix(PathBuf::from("/tmp/sock dir"))]);
        assert_eq!(c.get_ports(), &[5434]);
        // A directory need not be UTF-8.
        let c = parse("postgres://%2Ftmp%2F%FF/app");
        assert_eq!(
            c.get_hosts(),
            [Host::Unix(PathBuf::from(OsStr::from_bytes(b"/tmp/\xff")))]
        );
    }

    #[test]
    fn url_ipv6_hosts() {
        let c = parse("postgres://u@[::1]:5433,[fe80::1%25eth0],[2001:db8::2]/d");
        assert_eq!(c.get_hosts(), tcp(&["::1", "fe80::1%eth0", "2001:db8::2"]));
        assert_eq!(c.get_ports(), &[5433, 5432, 5432]);
        for url in [
            "postgres://[::1",
            "postgres://[::1]x",
            "postgres://[::1]5432/d",
        ] {
            let e = url.parse::<PgConfig>().unwrap_err();
            assert_eq!(e, PgConfigError::InvalidValue("host"), "{url}");
        }
    }

    #[test]
    fn multiple_hosts() {
        let c = parse("postgres://u@h1:1234,h2,h3:5678/d");
        assert_eq!(c.get_hosts(), tcp(&["h1", "h2", "h3"]));
        assert_eq!(c.get_ports(), &[1234, 5432, 5678]);
        // An empty port means libpq's default.
        let c = parse("postgres://h1:,h2:7");
        assert_eq!(c.get_ports(), &[5432, 7]);

        let c = parse("host=h1,/run/pg,h3 port=1234,,5678");
        assert_eq!(
            c.get_hosts(),
            [
                Host::Tcp("h1".into()),
                Host::Unix(PathBuf::from("/run/pg")),
                Host::Tcp("h3".into())
            ]
        );
        assert_eq!(c.get_ports(), &[1234, 5432, 5678]);

        // The builder adds; it does not replace.
        let mut c = PgConfig::new();
        c.host("a").host("/tmp").port(1).port(2);
        assert_eq!(
            c.get_hosts(),
            [Host::Tcp("a".into()), Host::Unix(PathBuf::from("/tmp"))]
        );
        assert_eq!(c.get_ports(), &[1, 2]);
    }

    #[test]
    fn host_addresses() {
        let c = parse("host=db.example.com,h2 hostaddr=127.0.0.1,::1 port=5433");
        assert_eq!(c.get_hosts(), tcp(&["db.example.com", "h2"]));
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        assert_eq!(c.get_hostaddrs(), [v4, v6]);
        let c = parse("postgres://db.example.com/d?hostaddr=127.0.0.1");
        assert_eq!(c.get_hostaddrs(), [v4]);
        assert!(PgConfig::new().get_hostaddrs().is_empty());
    }

    #[test]
    fn keyword_form() {
        let c = parse(
            "  host=db port = 5433 user=app password=pw dbname=orders options='-c statement_timeout=5s' \
             application_name=api connect_timeout=0 channel_binding=disable sslmode=require target_session_attrs=any ",
        );
        assert_eq!(c.get_hosts(), tcp(&["db"]));
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_user(), Some("app"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.get_dbname(), Some("orders"));
        assert_eq!(c.get_options(), Some("-c statement_timeout=5s"));
        assert_eq!(c.get_application_name(), Some("api"));
        // libpq: zero means no bound.
        assert_eq!(c.get_connect_timeout(), None);
        assert_eq!(c.get_channel_binding(), ChannelBinding::Disable);
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(parse(""), PgConfig::new());
        assert_eq!(parse(" \t\n"), PgConfig::new());
    }

    #[test]
    fn keyword_quoting_and_escapes() {
        let c = parse(r"password='it\'s a \\secret' user=a\ b dbname='' options=x\");
        assert_eq!(c.get_password(), Some(&br"it's a \secret"[..]));
        assert_eq!(c.get_user(), Some("a b"));
        assert_eq!(c.get_dbname(), Some(""));
        // A trailing backslash escapes nothing and is dropped.
        assert_eq!(c.get_options(), Some("x"));
        // Percent signs mean nothing in this form.
        assert_eq!(parse("user=a%20b").get_user(), Some("a%20b"));

        for (s, why) in [
            ("password='open", "a quoted value is not closed"),
            ("user", "expected `=` but the string ended"),
            ("user x", "expected `=` at byte 5"),
            ("user=", "a value is missing"),
            ("user='a'b", "expected `=` but the string ended"),
        ] {
            let e = s.parse::<PgConfig>().unwrap_err().to_string();
            assert!(e.contains(why), "{s:?}: {e}");
        }
    }

    #[test]
    fn empty_password() {
        let url = parse("postgres://u:@h/d");
        assert_eq!(url.get_user(), Some("u"));
        assert_eq!(url.get_password(), Some(&b""[..]));
        let kw = parse("user=u password=''");
        assert_eq!(kw.get_password(), Some(&b""[..]));
        // No `:` is no password at all, which is not the same thing.
        assert_eq!(parse("postgres://u@h/d").get_password(), None);
        assert_eq!(parse("postgres://@h/d").get_user(), Some(""));
    }

    #[test]
    fn bad_port() {
        for s in [
            "postgres://h:notaport/d",
            "postgres://h:70000/d",
            "postgres://h:-1/d",
            "postgres://h/d?port=5432,x",
            "host=h port=5432x",
        ] {
            let e = s.parse::<PgConfig>().unwrap_err();
            assert_eq!(e, PgConfigError::InvalidValue("port"), "{s}");
            assert_eq!(
                e.to_string(),
                "invalid connection string: invalid value for option `port`"
            );
        }
    }

    #[test]
    fn bad_values_name_their_option() {
        for (s, option) in [
            ("sslmode=allow", "sslmode"),
            ("channel_binding=always", "channel_binding"),
            ("connect_timeout=soon", "connect_timeout"),
            ("target_session_attrs=primary", "target_session_attrs"),
            ("host=h hostaddr=127.0.0", "hostaddr"),
            ("postgres://h/d?hostaddr=localhost", "hostaddr"),
        ] {
            let e = s.parse::<PgConfig>().unwrap_err();
            assert_eq!(e, PgConfigError::InvalidValue(option), "{s}");
        }
    }

    #[test]
    fn unknown_and_unsupported_options_are_refused_by_name() {
        let e = "host=h colour=blue".parse::<PgConfig>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid connection string: unknown option `colour`"
        );
        let e = "postgres://h/d?col%6Fur=blue"
            .parse::<PgConfig>()
            .unwrap_err();
        assert_eq!(e, PgConfigError::UnknownOption("colour".into()));
        // libpq's `sslrootcert` is the configuration's to read, not this parser's.
        let e = "host=h sslrootcert=/ca.pem"
            .parse::<PgConfig>()
            .unwrap_err();
        assert_eq!(e, PgConfigError::UnknownOption("sslrootcert".into()));

        for s in [
            "host=h sslnegotiation=direct",
            "postgres://h/d?keepalives=0",
            "postgres://h/d?load_balance_hosts=random",
        ] {
            let e = s.parse::<PgConfig>().unwrap_err();
            assert!(matches!(e, PgConfigError::Unsupported(_)), "{s}: {e}");
            assert!(e.to_string().contains("is not supported"), "{e}");
        }
        let e = "postgres://h/d?user".parse::<PgConfig>().unwrap_err();
        assert!(e.to_string().contains("no `=`"), "{e}");
    }

    #[test]
    fn debug_redacts_the_password() {
        let c = parse("postgres://app:hunter2-secret@h/d");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("password: Some(<redacted>)"), "{shown}");
        assert!(shown.contains("user: Some(\"app\")"), "{shown}");
        let mut c = PgConfig::new();
        c.password([0xffu8, b'x']);
        assert!(!format!("{c:?}").contains("255"), "{c:?}");
        assert!(format!("{:?}", PgConfig::new()).contains("password: None"));
    }

    #[test]
    fn errors_never_show_the_password() {
        for s in [
            "postgres://u:hunter2@h:notaport/d",
            "postgres://u:hunter2@h/d?nope=1",
            "postgres://u:hunter2@[::1/d",
            "postgres://%FF:hunter2@h/d",
            "password=hunter2 port=x",
            "password=hunter2 nope=1",
            "password='hunter2",
            "password=hunter2 x",
            "password=hunter2 keepalives=1",
            "password=hunter2 hostaddr=10.0.0",
            "postgres://h/d?password=hunter2&password",
        ] {
            let e = s.parse::<PgConfig>().unwrap_err();
            for shown in [e.to_string(), format!("{e:?}")] {
                assert!(!shown.contains("hunter2"), "{s}: {shown}");
            }
        }
    }

    /// Every string here parses to the same settings as tokio-postgres 0.7 gives, which the
    /// extension used before: compared field by field.
    #[test]
    fn matches_tokio_postgres() {
        use tokio_postgres::config::{ChannelBinding as TpBinding, Host as TpHost};
        for s in [
            "postgres://u:p%20w@h1:1,[::1]:2,h3/d%2F?application_name=x&connect_timeout=9",
            "postgresql://%2Ftmp:7/d?options=-c%20a%3Db&channel_binding=disable",
            "postgres://@h:/?user=v",
            "postgres://u@h/d?host=%2Fsock&host=h2&port=3",
            "host=a,/b,c port=1,,3 user='x y' password=a\\'b dbname=d connect_timeout=-1",
            "user=u channel_binding=require application_name='' options=\\'",
            "postgres://h/d?application_name=a@b",
            "host=h1,h2 hostaddr=10.0.0.1,fe80::2 port=1",
        ] {
            let ours = parse(s);
            let theirs = tokio_postgres::Config::from_str(s).unwrap();
            assert_eq!(ours.get_user(), theirs.get_user(), "{s}");
            assert_eq!(ours.get_password(), theirs.get_password(), "{s}");
            assert_eq!(ours.get_dbname(), theirs.get_dbname(), "{s}");
            assert_eq!(ours.get_options(), theirs.get_options(), "{s}");
            assert_eq!(
                ours.get_application_name(),
                theirs.get_application_name(),
                "{s}"
            );
            assert_eq!(ours.get_ports(), theirs.get_ports(), "{s}");
            assert_eq!(ours.get_hostaddrs(), theirs.get_hostaddrs(), "{s}");
            assert_eq!(
                ours.get_connect_timeout(),
                theirs.get_connect_timeout().copied(),
                "{s}"
            );
            let hosts: Vec<Host> = theirs
                .get_hosts()
                .iter()
                .map(|h| match h {
                    TpHost::Tcp(h) => Host::Tcp(h.clone()),
                    TpHost::Unix(p) => Host::Unix(p.clone()),
                })
                .collect();
            assert_eq!(ours.get_hosts(), hosts, "{s}");
            let binding = match theirs.get_channel_binding() {
                TpBinding::Disable => ChannelBinding::Disable,
                TpBinding::Prefer => ChannelBinding::Prefer,
                _ => ChannelBinding::Require,
            };
            assert_eq!(ours.get_channel_binding(), binding, "{s}");
        }
        for s in [
            "postgres://h:x",
            "postgres://[::1",
            "postgres://h?nope=1",
            "host=h nope=1",
            "user='x",
            "user=",
            "postgres://h?user",
            "host=h hostaddr=h",
        ] {
            assert!(s.parse::<PgConfig>().is_err(), "{s}");
            assert!(tokio_postgres::Config::from_str(s).is_err(), "{s}");
        }
    }
}
