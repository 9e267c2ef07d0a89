//! containerd's filter syntax, as `Walk` receives it: a list of filters, any
//! of which may match; each a comma-separated list of selectors that must
//! all match. A selector is a field path (`name`, `parent`, `kind`,
//! `labels.<key>`, a part in double quotes when it has dots or slashes)
//! alone (present) or followed by `==` or `!=` and a value (bare or quoted).
//! Regular expressions (`~=`) are refused.

use super::snapshots::{Info, Kind};

#[derive(Debug, Clone, PartialEq)]
enum Operator {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Selector {
    path: Vec<String>,
    operator: Operator,
}

/// Parsed filters: matches when any of them does (or when there are none).
#[derive(Debug, Clone, PartialEq)]
pub struct Filters(Vec<Vec<Selector>>);

impl Filters {
    /// Parses `Walk`'s filters; an empty string matches everything.
    pub fn parse(filters: &[String]) -> Result<Filters, String> {
        let mut out = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            out.push(Parser::new(f).filter()?);
        }
        Ok(Filters(out))
    }

    /// Whether a snapshot matches.
    pub fn matches(&self, info: &Info) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|selectors| selectors.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let (value, present) = field(info, &self.path);
        match &self.operator {
            Operator::Present => present,
            Operator::Equal(v) => present && value == *v,
            // As containerd: a missing field differs from any value.
            Operator::NotEqual(v) => value != *v,
        }
    }
}

/// A field's value and whether it is present, as containerd's snapshot
/// adaptor answers.
fn field(info: &Info, path: &[String]) -> (String, bool) {
    let Some((first, rest)) = path.split_first() else {
        return (String::new(), false);
    };
    match first.as_str() {
        // Always present, even empty (containerd's adaptSnapshot): the
        // lookup of a base layer's target filters on `parent==""`.
        "name" => (info.name.clone(), true),
        "parent" => (info.record.parent.clone(), true),
        "kind" => {
            let k = match info.record.kind {
                Kind::View => "view",
                Kind::Active => "active",
                Kind::Committed => "committed",
            };
            (k.to_string(), true)
        }
        "labels" => match info.record.labels.get(&rest.join(".")) {
            Some(v) => (v.clone(), true),
            None => (String::new(), false),
        },
        _ => (String::new(), false),
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Parser<'a> {
        Parser { text, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_spaces(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }

    fn error(&self, what: &str) -> String {
        format!("filter {:?}: {what} at offset {}", self.text, self.pos)
    }

    fn filter(&mut self) -> Result<Vec<Selector>, String> {
        let mut selectors = vec![self.selector()?];
        loop {
            self.skip_spaces();
            if self.rest().is_empty() {
                return Ok(selectors);
            }
            if !self.rest().starts_with(',') {
                return Err(self.error("expected ','"));
            }
            self.pos += 1;
            selectors.push(self.selector()?);
        }
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let mut path = vec![self.field()?];
        while self.rest().starts_with('.') {
            self.pos += 1;
            path.push(self.field()?);
        }
        self.skip_spaces();
        let r = self.rest();
        let operator = if r.is_empty() || r.starts_with(',') {
            Operator::Present
        } else if let Some(op) = ["==", "!="].into_iter().find(|op| r.starts_with(op)) {
            self.pos += 2;
            let v = self.value()?;
            if op == "==" {
                Operator::Equal(v)
            } else {
                Operator::NotEqual(v)
            }
        } else if r.starts_with("~=") {
            return Err(self.error("regular expressions (~=) are not supported"));
        } else {
            return Err(self.error("expected an operator (== or !=)"));
        };
        Ok(Selector { path, operator })
    }

    fn field(&mut self) -> Result<String, String> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a field name"));
        }
        let f = self.rest()[..len].to_string();
        self.pos += len;
        Ok(f)
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_spaces();
        if self.rest().starts_with('"') {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| c == ',' || c.is_whitespace())
            .unwrap_or(self.rest().len());
        let v = self.rest()[..len].to_string();
        self.pos += len;
        Ok(v)
    }

    /// A double-quoted string with backslash escapes.
    fn quoted(&mut self) -> Result<String, String> {
        let mut out = String::new();
        let mut chars = self.rest().char_indices().skip(1);
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e)) => out.push(e),
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(self.error("unterminated quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshotter::snapshots::SnapshotRecord;
    use std::collections::BTreeMap;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            record: SnapshotRecord {
                kind,
                parent: parent.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                created: 0,
                updated: 0,
                layer: None,
                dir: None,
            },
        }
    }

    fn matches(filters: &[&str], i: &Info) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&f).unwrap().matches(i)
    }

    /// The filter containerd sends after a Prepare answered AlreadyExists.
    #[test]
    fn the_target_lookup_of_containerd_matches_label_and_parent() {
        let i = info(
            "sha256:abc on p",
            "default/3/sha256:p",
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let f = r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="default/3/sha256:p""#;
        assert!(matches(&[f], &i));
        let other = r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="x""#;
        assert!(!matches(&[other], &i));
        assert!(matches(&[other, "kind==committed"], &i), "any filter");
    }

    /// The same lookup for a base layer: its parent is empty, which
    /// `parent==""` matches (the CRI's pull of a layer lstore holds).
    #[test]
    fn the_target_lookup_of_a_base_layer_matches_its_empty_parent() {
        let i = info(
            "sha256:abc",
            "",
            Kind::Committed,
            &[("containerd.io/snapshot.ref", "sha256:abc")],
        );
        let f = r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="""#;
        assert!(matches(&[f], &i));
        let on_p = r#"labels."containerd.io/snapshot.ref"==sha256:abc,parent=="p""#;
        assert!(!matches(&[on_p], &i));
    }

    #[test]
    fn presence_inequality_and_empty_filters() {
        let i = info("a", "", Kind::Active, &[("x.y", "1")]);
        assert!(matches(&[], &i));
        assert!(matches(&[""], &i));
        assert!(matches(&["labels.x.y"], &i));
        assert!(matches(&["parent"], &i), "always present, as in containerd");
        assert!(matches(&["parent==\"\""], &i));
        assert!(matches(&["name!=b , kind==active"], &i));
        assert!(!matches(&["labels.z==1"], &i));
        assert!(matches(&["labels.z!=1"], &i));
    }

    #[test]
    fn malformed_filters_are_refused() {
        for f in [
            "name=~x",
            "name~=x",
            "\"unterminated",
            "name==a b",
            ",",
            "labels.",
        ] {
            assert!(Filters::parse(&[f.to_string()]).is_err(), "{f}");
        }
    }
}
