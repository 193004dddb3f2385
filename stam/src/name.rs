//! Sample name rules.

use crate::error::NameError;

/// Longest allowed sample name, in characters.
pub const MAX_NAME_LEN: usize = 239;

/// Checks a sample name against the naming rules.
///
/// A name starts with `/`, has no empty component (`//`), does not end with
/// `/`, contains no `\` and no control characters, and is at most
/// [`MAX_NAME_LEN`] characters long.
///
/// ```
/// assert!(stam::validate_name("/PGM/Page/cZeroPages").is_ok());
/// assert!(stam::validate_name("PGM/cPages").is_err());
/// assert!(stam::validate_name("/PGM//cPages").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if !name.starts_with('/') {
        return Err(NameError::NoLeadingSlash);
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if name.contains("//") {
        return Err(NameError::EmptyComponent);
    }
    if name.ends_with('/') {
        return Err(NameError::TrailingSlash);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_typical_names() {
        for n in ["/a", "/GMM/cChunks", "/HM/Exit/Reason-30", "/x/y z/ü"] {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn rejects_each_rule() {
        assert_eq!(validate_name(""), Err(NameError::NoLeadingSlash));
        assert_eq!(validate_name("a/b"), Err(NameError::NoLeadingSlash));
        assert_eq!(validate_name("/"), Err(NameError::TrailingSlash));
        assert_eq!(validate_name("/a/"), Err(NameError::TrailingSlash));
        assert_eq!(validate_name("//a"), Err(NameError::EmptyComponent));
        assert_eq!(validate_name("/a//b"), Err(NameError::EmptyComponent));
        assert_eq!(validate_name("/a\\b"), Err(NameError::Backslash));
        assert_eq!(validate_name("/a\nb"), Err(NameError::ControlCharacter));
    }

    #[test]
    fn length_limit_counts_characters() {
        let ok = format!("/{}", "a".repeat(MAX_NAME_LEN - 1));
        assert_eq!(validate_name(&ok), Ok(()));
        let long = format!("/{}", "a".repeat(MAX_NAME_LEN));
        assert_eq!(validate_name(&long), Err(NameError::TooLong));
        let wide = format!("/{}", "é".repeat(MAX_NAME_LEN - 1));
        assert_eq!(validate_name(&wide), Ok(()));
    }

    proptest! {
        #[test]
        fn valid_iff_rules_hold(s in "[/a\\\\\n]{0,8}|/[a-z/]{0,300}") {
            let expected = s.starts_with('/')
                && !s.contains("//")
                && !s.ends_with('/')
                && !s.contains('\\')
                && !s.contains('\n')
                && s.chars().count() <= MAX_NAME_LEN;
            prop_assert_eq!(validate_name(&s).is_ok(), expected);
        }
    }
}
