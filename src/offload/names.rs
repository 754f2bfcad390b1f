//! What a file's sender says about it, made safe: names (kept as metadata only, never in a
//! key) and content types (checked against the bucket's allow-list).

/// Longest name kept, in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// A sender's file name made safe to keep and show: only its last path component, without
/// control characters (NUL included), bidirectional-text controls (which make `exe.pdf`
/// look like `fdp.exe`) or leading and trailing spaces and dots, at most
/// [`MAX_NAME_CHARS`] characters (the extension kept when cut). `None` when nothing is left.
pub fn sanitise_name(raw: &str) -> Option<String> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| c.is_whitespace() || c == '.');
    if trimmed.is_empty() {
        return None;
    }
    let count = trimmed.chars().count();
    if count <= MAX_NAME_CHARS {
        return Some(trimmed.to_string());
    }
    let extension = trimmed
        .rsplit_once('.')
        .map(|(_, ext)| ext)
        .filter(|ext| !ext.is_empty() && ext.chars().count() <= 16);
    Some(match extension {
        Some(ext) => {
            let keep = MAX_NAME_CHARS - ext.chars().count() - 1;
            let stem: String = trimmed.chars().take(keep).collect();
            format!("{stem}.{ext}")
        }
        None => trimmed.chars().take(MAX_NAME_CHARS).collect(),
    })
}

/// Marks and embeddings that change the order text is shown in.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    ) || matches!(c, '\u{200B}'..='\u{200D}' | '\u{FEFF}')
}

/// A name as ASCII for object metadata (S3 metadata values are ASCII): percent-encoded.
pub fn ascii_safe(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, percent_encoding::CONTROLS)
        .to_string()
        .chars()
        .flat_map(|c| {
            if c.is_ascii() {
                vec![c]
            } else {
                c.to_string()
                    .bytes()
                    .flat_map(|b| format!("%{b:02X}").chars().collect::<Vec<_>>())
                    .collect()
            }
        })
        .collect()
}

/// `type/subtype` in lowercase without parameters, if `raw` is one.
pub fn normalise_content_type(raw: &str) -> Option<String> {
    let essence = raw
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    (token(kind) && token(sub)).then_some(essence)
}

/// Whether `content_type` (normalised) matches an entry of `allowed`: the same type, a
/// `type/*` or `prefix.*` pattern, or `*/*`.
pub fn content_type_allowed(content_type: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|pattern| {
        if pattern == "*/*" || pattern == content_type {
            return true;
        }
        match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') || prefix.ends_with('.') => {
                content_type.starts_with(prefix)
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_only_its_last_component() {
        assert_eq!(sanitise_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(
            sanitise_name("C:\\Users\\a\\report.pdf").as_deref(),
            Some("report.pdf")
        );
        assert_eq!(sanitise_name("..").as_deref(), None);
        assert_eq!(sanitise_name("/").as_deref(), None);
        assert_eq!(sanitise_name(" . ").as_deref(), None);
    }

    #[test]
    fn control_and_direction_marks_are_dropped() {
        assert_eq!(sanitise_name("a\0b\r\n.pdf").as_deref(), Some("ab.pdf"));
        assert_eq!(
            sanitise_name("invoice\u{202E}fdp.exe").as_deref(),
            Some("invoicefdp.exe")
        );
        assert_eq!(sanitise_name("счёт №1.pdf").as_deref(), Some("счёт №1.pdf"));
    }

    #[test]
    fn a_long_name_is_cut_keeping_its_extension() {
        let long = format!("{}.pdf", "x".repeat(2000));
        let cut = sanitise_name(&long).expect("a name");
        assert_eq!(cut.chars().count(), MAX_NAME_CHARS);
        assert!(cut.ends_with(".pdf"));
    }

    #[test]
    fn metadata_names_are_ascii() {
        assert_eq!(ascii_safe("a b.pdf"), "a b.pdf");
        assert_eq!(ascii_safe("ё.pdf"), "%D1%91.pdf");
    }

    #[test]
    fn content_types_are_normalised_and_matched() {
        assert_eq!(
            normalise_content_type("Application/PDF; charset=binary").as_deref(),
            Some("application/pdf")
        );
        assert_eq!(normalise_content_type("pdf"), None);
        assert_eq!(normalise_content_type("text/ html"), None);
        let allowed = vec![
            "application/pdf".to_string(),
            "image/*".to_string(),
            "application/vnd.openxmlformats-officedocument.*".to_string(),
        ];
        assert!(content_type_allowed("application/pdf", &allowed));
        assert!(content_type_allowed("image/png", &allowed));
        assert!(content_type_allowed(
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            &allowed
        ));
        assert!(!content_type_allowed("application/x-msdownload", &allowed));
        assert!(!content_type_allowed("imagex/png", &allowed));
        assert!(content_type_allowed("anything/else", &["*/*".to_string()]));
    }
}
