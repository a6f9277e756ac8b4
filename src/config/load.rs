//! The figment layering and the bookkeeping that lets every problem name its key and where the
//! value came from: the file, an environment variable, or the built-in default.

use std::path::Path;

use figment::{
    Figment, Metadata, Source,
    error::Kind,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Value},
};
use serde::de::DeserializeOwned;

use super::{Config, ConfigErrors, ConfigProblem, raw};

/// Prefix of the environment variables that override config keys (`__` separates nesting levels).
pub(super) const ENV_PREFIX: &str = "SIDEPOOL_";
/// Source label for problems in text given to [`Config::from_toml_str`].
pub(super) const STRING_SOURCE: &str = "toml";

pub(super) fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
    let label = path.display().to_string();
    if !path.is_file() {
        let what = if path.exists() {
            "is not a regular file"
        } else {
            "not found"
        };
        return Err(ConfigErrors(vec![ConfigProblem {
            key: "config".into(),
            source: label.clone(),
            message: format!("config file `{label}` {what}; pass --config FILE"),
        }]));
    }
    // file_exact: `Toml::file` would search parent directories and ignore a missing file.
    let figment = Figment::from(Serialized::defaults(raw::defaults()))
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"]));
    Loader::new(figment, label).run()
}

pub(super) fn from_str(toml: &str) -> Result<Config, ConfigErrors> {
    let figment = Figment::from(Serialized::defaults(raw::defaults())).merge(Toml::string(toml));
    Loader::new(figment, STRING_SOURCE.into()).run()
}

/// Key path as segments; segments may contain dots (`dns.static."api.example.com"`).
pub(super) type Key = Vec<String>;

pub(super) fn key(parts: &[&str]) -> Key {
    parts.iter().map(|p| p.to_string()).collect()
}

/// `a.b."c.d"`: dotted, with TOML-style quotes around segments that are not bare keys.
pub(super) fn key_text(key: &[String]) -> String {
    if key.is_empty() {
        return "config".into();
    }
    let bare = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let parts: Vec<String> = key
        .iter()
        .map(|s| if bare(s) { s.clone() } else { format!("{s:?}") })
        .collect();
    parts.join(".")
}

/// Figment messages (TOML parse errors in particular) can span lines; a problem is one line.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        // Drop the source-snippet lines of TOML parse errors (`|`, `1 | x =`, `  ^`).
        .filter(|l| {
            let numbered = l
                .split_once(" |")
                .is_some_and(|(n, _)| n.parse::<u32>().is_ok());
            !(l.is_empty() || l.starts_with(['|', '^']) || numbered)
        })
        .collect();
    lines.join("; ")
}

/// Collects problems while validating one layered figment.
pub(super) struct Loader {
    pub(super) figment: Figment,
    /// The merged tree, tags intact, for looking up where a key's value came from.
    pub(super) root: Value,
    /// File path as given (or [`STRING_SOURCE`]): the fallback source.
    label: String,
    pub(super) problems: Vec<ConfigProblem>,
    pub(super) warnings: Vec<ConfigProblem>,
    pub(super) notes: Vec<ConfigProblem>,
}

impl Loader {
    pub(super) fn new(figment: Figment, label: String) -> Self {
        Loader {
            figment,
            root: Value::from(Dict::new()),
            label,
            problems: vec![],
            warnings: vec![],
            notes: vec![],
        }
    }

    fn run(mut self) -> Result<Config, ConfigErrors> {
        // A file that cannot be read or parsed breaks every key: report that alone.
        match self.figment.find_value("") {
            Ok(root) => self.root = root,
            Err(err) => {
                self.figment_errors(&[], err);
                return Err(ConfigErrors(self.problems));
            }
        }
        if let Some(dict) = self.root.as_dict() {
            let unknown: Vec<String> = dict
                .keys()
                .filter(|k| !raw::SECTIONS.contains(&k.as_str()))
                .cloned()
                .collect();
            for name in unknown {
                let message = Kind::UnknownField(name.clone(), raw::SECTIONS).to_string();
                self.problem(vec![name], message);
            }
        }
        match self.sections() {
            Some(mut config) if self.problems.is_empty() => {
                config.warnings = self.warnings;
                config.notes = self.notes;
                Ok(config)
            }
            _ => Err(ConfigErrors(self.problems)),
        }
    }

    /// A finding at `key`, with the source of its value.
    pub(super) fn finding(&self, key: Key, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem {
            source: self.source(&key),
            key: key_text(&key),
            message: message.into(),
        }
    }

    pub(super) fn problem(&mut self, key: Key, message: impl Into<String>) {
        let found = self.finding(key, message);
        self.problems.push(found);
    }

    /// The value at `key` in the merged tree, walking segments (which may contain dots).
    pub(super) fn value_at(&self, key: &[String]) -> Option<&Value> {
        key.iter()
            .try_fold(&self.root, |v, seg| v.as_dict()?.get(seg))
    }

    /// Where the value of `key` came from. An upstream key that is not set falls back to the
    /// `[pool]` key it inherits; anything else not found falls back to the file.
    pub(super) fn source(&self, path: &[String]) -> String {
        let found = |k: &[String]| {
            let md = self.figment.get_metadata(self.value_at(k)?.tag())?;
            Some(self.describe(md, k))
        };
        if !path.is_empty()
            && let Some(source) = found(path)
        {
            return source;
        }
        if path.len() == 3
            && path[0] == "upstreams"
            && let Some(source) = found(&key(&["pool", &path[2]]))
        {
            return source;
        }
        self.label.clone()
    }

    fn describe(&self, md: &Metadata, key: &[String]) -> String {
        match &md.source {
            Some(Source::File(_)) => self.label.clone(),
            Some(Source::Code(_)) => "default".into(),
            _ if md.name.contains("environment") => {
                let name: Vec<String> = key.iter().map(|s| s.to_ascii_uppercase()).collect();
                format!("env {ENV_PREFIX}{}", name.join("__"))
            }
            _ => self.label.clone(),
        }
    }

    /// Records every error in a figment error chain; `prefix` is the focused table's key.
    pub(super) fn figment_errors(&mut self, prefix: &[&str], err: figment::Error) {
        for e in err {
            let mut path = e.path.clone();
            if prefix.is_empty() && path.first().is_some_and(|p| p == "default") {
                path.remove(0); // the profile name, not a key
            }
            let mut full = key(prefix);
            full.extend(path);
            // Name the missing key itself, not the table that lacks it.
            if let Kind::MissingField(field) = &e.kind
                && full.last().is_none_or(|last| last != field.as_ref())
            {
                full.push(field.to_string());
            }
            let message = one_line(&e.kind.to_string());
            let source = match (&e.metadata, full.is_empty()) {
                (Some(md), true) => self.describe(md, &full),
                _ => self.source(&full),
            };
            self.problems.push(ConfigProblem {
                key: key_text(&full),
                source,
                message,
            });
        }
    }

    /// Extracts one table on its own, so one bad section does not hide problems in the others.
    pub(super) fn section<T: DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        self.table(&[name])?;
        match self.figment.focus(name).extract::<T>() {
            Ok(v) => Some(v),
            Err(err) => {
                self.figment_errors(&[name], err);
                None
            }
        }
    }

    /// The table at `path`, or a problem if the key holds something else.
    fn table(&mut self, path: &[&str]) -> Option<Dict> {
        let k = key(path);
        match self.value_at(&k) {
            Some(Value::Dict(_, d)) => Some(d.clone()),
            None => Some(Dict::new()),
            Some(v) => {
                let message = Kind::InvalidType(v.to_actual(), "a table".into()).to_string();
                self.problem(k, message);
                None
            }
        }
    }

    /// Splits the table at `path` into its own keys and the [`super::Limits`] keys, and reads
    /// both: `T` from its own keys, the limits from `base` with this table's keys laid over
    /// it. Unknown keys are reported against `known` (every key the table accepts).
    /// Returns the limits part as written, so a caller can tell a set key from an inherited one.
    pub(super) fn split_table<T: DeserializeOwned>(
        &mut self,
        path: &[&str],
        known: &'static [&'static str],
        base: &super::Limits,
    ) -> Option<(Option<T>, Option<super::Limits>, Dict)> {
        let table = self.table(path)?;
        let limit_keys = super::Limits::keys();
        let (mut limits, mut own) = (Dict::new(), Dict::new());
        for (name, value) in table {
            if limit_keys.contains(&name.as_str()) {
                limits.insert(name, value);
            } else if known.contains(&name.as_str()) {
                own.insert(name, value);
            } else {
                let mut message = Kind::UnknownField(name.clone(), known).to_string();
                if name == "max_connections" && path[0] == "upstreams" {
                    message.push_str("; max_connections is global; use max_connections_per_host");
                }
                let mut k = key(path);
                k.push(name);
                self.problem(k, message);
            }
        }
        let own = self.read::<T>(path, Figment::from(Serialized::defaults(own)));
        let set = limits.clone();
        let limits = self.read::<super::Limits>(
            path,
            Figment::from(Serialized::defaults(base)).merge(Serialized::defaults(limits)),
        );
        Some((own, limits, set))
    }

    fn read<T: DeserializeOwned>(&mut self, path: &[&str], figment: Figment) -> Option<T> {
        match figment.extract::<T>() {
            Ok(v) => Some(v),
            Err(err) => {
                self.figment_errors(path, err);
                None
            }
        }
    }
}
