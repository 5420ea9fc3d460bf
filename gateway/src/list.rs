//! One page of a listing (ListObjectsV2 and ListObjects): keys under a
//! prefix in byte order, rolled up at a delimiter into common prefixes,
//! resumed after a key or prefix, cut at max-keys. Pure: the caller hands
//! in the entries (from `Client::walk` or `Client::list`).

/// A listed object, or (`dir`) a directory standing for the common prefix
/// `key` (which then ends in `/`).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub dir: bool,
    pub attr: stoker_proto::control::Attr,
}

#[derive(Debug, Default)]
pub struct Page {
    pub objects: Vec<Entry>,
    pub prefixes: Vec<String>,
    /// More follow: resume after `last`.
    pub truncated: bool,
    /// The last key or prefix of the page.
    pub last: Option<String>,
}

/// Most keys a page holds (S3's limit).
pub const MAX_KEYS: usize = 1000;

enum Item {
    Object(Entry),
    Prefix(String),
}

/// The page of `entries` (sorted by key) under `prefix`, after `after`.
pub fn page(entries: &[Entry], prefix: &str, delimiter: Option<&str>, after: Option<&str>, max_keys: usize) -> Page {
    let delimiter = delimiter.filter(|d| !d.is_empty());
    let start = entries.partition_point(|e| e.key.as_str() < prefix);
    let mut out = Page::default();
    let mut count = 0;
    let mut last_prefix: Option<String> = None;
    for e in &entries[start..] {
        if !e.key.starts_with(prefix) {
            break;
        }
        let rest = &e.key[prefix.len()..];
        let item = match delimiter.and_then(|d| rest.find(d).map(|i| i + d.len())) {
            Some(end) => Item::Prefix(e.key[..prefix.len() + end].to_string()),
            None if e.dir => continue, // a directory with nothing to roll up into
            None => Item::Object(e.clone()),
        };
        let name = match &item {
            Item::Object(o) => o.key.as_str(),
            Item::Prefix(p) => p.as_str(),
        };
        if after.is_some_and(|a| name <= a) || last_prefix.as_deref() == Some(name) {
            continue;
        }
        if count == max_keys {
            out.truncated = true;
            break;
        }
        count += 1;
        out.last = Some(name.to_string());
        match item {
            Item::Object(o) => out.objects.push(o),
            Item::Prefix(p) => {
                last_prefix = Some(p.clone());
                out.prefixes.push(p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stoker_proto::control::{Attr, Kind};

    fn entries(keys: &[&str]) -> Vec<Entry> {
        let mut v: Vec<Entry> = keys
            .iter()
            .map(|k| Entry {
                key: k.to_string(),
                dir: k.ends_with('/'),
                attr: Attr { kind: Kind::File, size: 1, mtime_ns: 0, version: String::new() },
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    fn keys(p: &Page) -> Vec<&str> {
        p.objects.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn prefix_delimiter_and_pages() {
        let e = entries(&["a.txt", "a/b/c", "a/b/d", "a/e", "b/x", "c"]);
        let p = page(&e, "", Some("/"), None, 1000);
        assert_eq!((keys(&p), p.prefixes.clone(), p.truncated), (vec!["a.txt", "c"], vec!["a/".to_string(), "b/".to_string()], false));
        let p = page(&e, "a/", Some("/"), None, 1000);
        assert_eq!((keys(&p), p.prefixes.clone()), (vec!["a/e"], vec!["a/b/".to_string()]));
        let p = page(&e, "a", None, None, 2);
        assert_eq!((keys(&p), p.truncated, p.last.as_deref()), (vec!["a.txt", "a/b/c"], true, Some("a/b/c")));
        let p = page(&e, "a", None, Some("a/b/c"), 2);
        assert_eq!((keys(&p), p.truncated), (vec!["a/b/d", "a/e"], false));
        // A page that ends on a common prefix resumes after it.
        let p = page(&e, "", Some("/"), None, 2);
        assert_eq!((keys(&p), p.prefixes.clone(), p.last.as_deref()), (vec!["a.txt"], vec!["a/".to_string()], Some("a/")));
        let p = page(&e, "", Some("/"), Some("a/"), 2);
        assert_eq!((keys(&p), p.prefixes.clone(), p.truncated), (vec!["c"], vec!["b/".to_string()], false));
        // Directories only show as prefixes.
        let e = entries(&["d/", "d2/", "f"]);
        let p = page(&e, "", Some("/"), None, 10);
        assert_eq!((keys(&p), p.prefixes.len()), (vec!["f"], 2));
        let p = page(&e, "", None, None, 10);
        assert_eq!(keys(&p), vec!["f"]);
    }

    #[test]
    fn paging_visits_every_key_once() {
        let names: Vec<String> = (0..2345).map(|i| format!("p/{:02}/k{i:05}", i % 37)).collect();
        let e = entries(&names.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..10 {
            let p = page(&e, "p/", None, after.as_deref(), 1000);
            seen.extend(p.objects.iter().map(|o| o.key.clone()));
            if !p.truncated {
                break;
            }
            after = p.last;
        }
        let mut want = names.clone();
        want.sort();
        assert_eq!(seen, want);
    }
}
