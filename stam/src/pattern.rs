//! Name patterns: `*` matches any run of characters, `?` exactly one, and `|`
//! separates alternatives. The empty pattern matches every name.

/// A compiled name pattern.
///
/// ```
/// let p = stam::Pattern::new("/PGM/*|/GMM/c?hunks");
/// assert!(p.matches("/PGM/Page/cZeroPages"));
/// assert!(p.matches("/GMM/cChunks"));
/// assert!(!p.matches("/HM/Exit"));
/// assert!(stam::Pattern::new("").matches("/anything"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// `None` matches everything (the empty pattern).
    alternatives: Option<Vec<Alternative>>,
}

/// One `|`-separated alternative, with fast forms for the common shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Alternative {
    /// No wildcard: the name itself.
    Exact(String),
    /// A literal followed only by `*`s: every name starting with it.
    Prefix(String),
    /// Anything else.
    Glob(String),
}

impl Alternative {
    fn new(text: &str) -> Self {
        match text.find(['*', '?']) {
            None => Alternative::Exact(text.to_owned()),
            Some(i) if text[i..].bytes().all(|b| b == b'*') => {
                Alternative::Prefix(text[..i].to_owned())
            }
            Some(_) => Alternative::Glob(text.to_owned()),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Alternative::Exact(text) => name == text,
            Alternative::Prefix(prefix) => name.starts_with(prefix.as_str()),
            Alternative::Glob(text) => glob_match(text.as_bytes(), name),
        }
    }

    /// The literal text every matching name starts with.
    fn literal_prefix(&self) -> &str {
        match self {
            Alternative::Exact(text) | Alternative::Prefix(text) => text,
            Alternative::Glob(text) => &text[..text.find(['*', '?']).unwrap_or(text.len())],
        }
    }
}

impl Pattern {
    /// Compiles `pattern`. Every string is a valid pattern; empty alternatives
    /// (as in `"a||b"`) match nothing.
    pub fn new(pattern: &str) -> Self {
        if pattern.is_empty() {
            return Pattern { alternatives: None };
        }
        let alternatives = pattern
            .split('|')
            .filter(|a| !a.is_empty())
            .map(Alternative::new)
            .collect();
        Pattern {
            alternatives: Some(alternatives),
        }
    }

    /// Whether `name` matches any alternative.
    pub fn matches(&self, name: &str) -> bool {
        match &self.alternatives {
            None => true,
            Some(alts) => alts.iter().any(|a| a.matches(name)),
        }
    }

    /// Literal prefixes that every matching name starts with, one per
    /// alternative, sorted and with prefixes covered by a shorter one removed.
    /// `None` means a name may start with anything.
    pub(crate) fn prefixes(&self) -> Option<Vec<&str>> {
        let alts = self.alternatives.as_ref()?;
        let mut prefixes: Vec<&str> = alts.iter().map(Alternative::literal_prefix).collect();
        if prefixes.iter().any(|p| p.is_empty()) {
            return None;
        }
        prefixes.sort_unstable();
        let mut kept: Vec<&str> = Vec::with_capacity(prefixes.len());
        for p in prefixes {
            if kept.last().is_none_or(|k| !p.starts_with(k)) {
                kept.push(p);
            }
        }
        Some(kept)
    }
}

/// Length in bytes of the UTF-8 character starting at `name[i]`.
fn char_len(name: &str, i: usize) -> usize {
    name[i..].chars().next().map_or(1, char::len_utf8)
}

/// Greedy wildcard match with backtracking to the last `*`: linear in the
/// common case, O(len(pattern) * len(name)) at worst.
fn glob_match(pat: &[u8], name: &str) -> bool {
    let text = name.as_bytes();
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < text.len() {
        match pat.get(p) {
            Some(b'?') => {
                p += 1;
                n += char_len(name, n);
            }
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == text[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    let next = sn + char_len(name, sn);
                    star = Some((sp, next));
                    p = sp + 1;
                    n = next;
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Obviously-correct recursive reference matcher over characters.
    fn naive(pat: &[char], name: &[char]) -> bool {
        match pat.split_first() {
            None => name.is_empty(),
            Some(('*', rest)) => (0..=name.len()).any(|i| naive(rest, &name[i..])),
            Some(('?', rest)) => !name.is_empty() && naive(rest, &name[1..]),
            Some((c, rest)) => name.first() == Some(c) && naive(rest, &name[1..]),
        }
    }

    fn naive_pattern(pattern: &str, name: &str) -> bool {
        if pattern.is_empty() {
            return true;
        }
        let name: Vec<char> = name.chars().collect();
        pattern
            .split('|')
            .filter(|a| !a.is_empty())
            .any(|a| naive(&a.chars().collect::<Vec<_>>(), &name))
    }

    #[test]
    fn examples() {
        let cases = [
            ("", "/a", true),
            ("/a", "/a", true),
            ("/a", "/ab", false),
            ("/a*", "/ab/c", true),
            ("*c", "/ab/c", true),
            ("/?b", "/ab", true),
            ("/?b", "/éb", true),
            ("/?b", "/b", false),
            ("/x|/a*", "/ab", true),
            ("|", "/ab", false),
            ("/a||/b", "/b", true),
            ("*a*b*c*", "/xaybzc", true),
            ("*a*b*c*", "/xaybz", false),
            ("/A", "/a", false),
        ];
        for (p, n, want) in cases {
            assert_eq!(Pattern::new(p).matches(n), want, "{p:?} vs {n:?}");
        }
    }

    #[test]
    fn prefixes_drop_covered_and_detect_wildcard_starts() {
        let p = Pattern::new("/PGM/Page*|/PGM/*|/GMM/c?");
        assert_eq!(p.prefixes(), Some(vec!["/GMM/c", "/PGM/"]));
        assert_eq!(Pattern::new("*x").prefixes(), None);
        assert_eq!(Pattern::new("").prefixes(), None);
        assert_eq!(Pattern::new("|").prefixes(), Some(vec![]));
    }

    proptest! {
        #[test]
        fn matches_like_naive_reference(
            pattern in "[ab*?|é/]{0,10}",
            name in "[abé/]{0,12}",
        ) {
            prop_assert_eq!(Pattern::new(&pattern).matches(&name), naive_pattern(&pattern, &name));
        }

        #[test]
        fn every_match_starts_with_a_prefix(pattern in "[ab*?|/]{1,8}", name in "[ab/]{0,10}") {
            let p = Pattern::new(&pattern);
            if let (true, Some(prefixes)) = (p.matches(&name), p.prefixes()) {
                prop_assert!(prefixes.iter().any(|pre| name.starts_with(pre)));
            }
        }
    }
}
