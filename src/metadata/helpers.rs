//! The language of request templates: the variables and helpers a template may use, and the
//! one minijinja environment in which validation checks templates and the wrappers render them.
//!
//! Invariants, whoever builds the environment with [`environment`]:
//!
//! - an undefined variable is an error, never empty text;
//! - no helper reads a file, the environment or the network: the environment has no loader
//!   (`include` finds only the templates the wrapper compiled itself), the date helpers know UTC
//!   only (they never read the time zone database), and the rest are pure functions of their
//!   arguments;
//! - every render runs on a budget of [`FUEL`]: each step of the template and every 64 bytes it
//!   creates or prints cost one unit, so a template can neither loop nor grow without end.
//!   Wrappers also refuse a rendered text over [`MAX_RENDERED_BYTES`].
//!
//! The helpers: `now()`, the filters `datetimeformat`, `dateformat` and `timeformat` (from
//! `minijinja-contrib`), `b64encode` and `b64decode` (standard base64 with padding, RFC 4648),
//! and minijinja's own `urlencode`, with the filters and tests built into minijinja (`upper`,
//! `default`, `replace`, ...).

use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use minijinja::machinery::{Token, tokenize};
use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, Value};

/// The variables a template may read, besides the helpers' functions (`now`).
pub const ROOTS: [&str; 4] = ["input", "settings", "connection", "callout"];

/// The fields of `connection`.
pub const CONNECTION_FIELDS: [&str; 2] = ["name", "endpoint"];

/// The fields of `callout`.
pub const CALLOUT_FIELDS: [&str; 3] = ["id", "attempt", "idempotency_key"];

/// The budget of one render: about this many template steps, or 64 times as many bytes
/// created or printed (some 12 MB), whichever runs out first.
pub const FUEL: u64 = 200_000;

/// Largest text one template may render (a path, a header, a body string, a SOAP body).
pub const MAX_RENDERED_BYTES: usize = 8 * 1024 * 1024;

/// Base64 that decodes with or without padding (encoding always pads).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A strict environment with every helper and the fuel budget. Wrappers add their formatter
/// (how printed values are escaped) and their templates.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(FUEL));
    env.add_function("now", minijinja_contrib::globals::now);
    env.add_filter("datetimeformat", minijinja_contrib::filters::datetimeformat);
    env.add_filter("dateformat", minijinja_contrib::filters::dateformat);
    env.add_filter("timeformat", minijinja_contrib::filters::timeformat);
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env
}

/// Whether `name` is a function of the environment (`now`, `range`, ...), which a template
/// may call like a variable.
pub fn is_function(env: &Environment<'_>, name: &str) -> bool {
    env.globals().any(|(global, _)| global == name)
}

/// The filters and tests `source` names that `env` does not have, in order, each once, as
/// (`"filter"` or `"test"`, name). Empty when the template does not tokenize (its compile
/// error says more).
pub fn unknown_helpers<'s>(env: &Environment<'_>, source: &'s str) -> Vec<(&'static str, &'s str)> {
    let mut names: Vec<(&'static str, &'s str)> = Vec::new();
    let mut previous: [Option<Token<'_>>; 2] = [None, None];
    for token in tokenize(source, false, SyntaxConfig::default()) {
        let Ok((token, _)) = token else {
            return Vec::new();
        };
        if let Token::Ident(name) = token {
            let kind = match &previous {
                // `x | name`, and `{% filter name %}`.
                [_, Some(Token::Pipe)]
                | [Some(Token::BlockStart), Some(Token::Ident("filter"))] => Some("filter"),
                // `x is name`, `x is not name`.
                [_, Some(Token::Ident("is"))]
                | [Some(Token::Ident("is")), Some(Token::Ident("not"))]
                    if name != "not" =>
                {
                    Some("test")
                }
                _ => None,
            };
            if let Some(kind) = kind
                && !names.contains(&(kind, name))
            {
                names.push((kind, name));
            }
        }
        previous = [previous[1].take(), Some(token)];
    }
    names
        .into_iter()
        .filter(|(kind, name)| !has_helper(env, kind, name))
        .collect()
}

/// Whether `env` has the filter or test `name`: applying it to nothing fails for any reason
/// but its absence only if it exists. (minijinja does not list its filters; the helpers are
/// pure, so trying one is harmless.)
fn has_helper(env: &Environment<'_>, kind: &str, name: &str) -> bool {
    let expr = match kind {
        "filter" => format!("none | {name}"),
        _ => format!("none is {name}"),
    };
    let missing = match kind {
        "filter" => ErrorKind::UnknownFilter,
        _ => ErrorKind::UnknownTest,
    };
    match env.compile_expression(&expr) {
        Ok(compiled) => match compiled.eval(()) {
            Ok(_) => true,
            Err(err) => err.kind() != missing,
        },
        Err(_) => true,
    }
}

/// The words for a render error: its kind and detail, and for a spent budget what it means.
pub fn describe(err: &Error) -> String {
    if err.kind() == ErrorKind::OutOfFuel {
        return format!(
            "the template used up its budget of {FUEL} steps (a loop too long or a text too large)"
        );
    }
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// Checks the size of a rendered text against [`MAX_RENDERED_BYTES`].
///
/// # Errors
/// The text is larger, with its size.
pub fn check_size(text: &str) -> Result<(), String> {
    if text.len() > MAX_RENDERED_BYTES {
        return Err(format!(
            "the rendered text is {} bytes, more than the {} MiB a template may produce",
            text.len(),
            MAX_RENDERED_BYTES / (1024 * 1024)
        ));
    }
    Ok(())
}

/// `text | b64encode`: standard base64 with padding of the text's UTF-8 bytes (or of bytes).
fn b64encode(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::String | ValueKind::Bytes => {
            Ok(STANDARD.encode(value.as_bytes().unwrap_or_default()))
        }
        ValueKind::Number | ValueKind::Bool => Ok(STANDARD.encode(value.to_string())),
        other => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("b64encode expects text, not {other}"),
        )),
    }
}

/// `text | b64decode`: the UTF-8 text that standard base64 (padded or not) encodes.
fn b64decode(value: &Value) -> Result<String, Error> {
    let Some(text) = value.as_str() else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("b64decode expects text, not {}", value.kind()),
        ));
    };
    let bytes = LENIENT.decode(text.trim()).map_err(|err| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("b64decode: the text is not base64 ({err})"),
        )
    })?;
    String::from_utf8(bytes).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            "b64decode: the decoded bytes are not UTF-8 text",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_filters_and_tests_are_found_once_each() {
        let env = environment();
        assert_eq!(
            unknown_helpers(
                &env,
                "{{ input.a | b64encod | upper }}{% if input.b is numbr %}{{ input.b | b64encod }}{% endif %}{% filter shout %}x{% endfilter %}"
            ),
            vec![
                ("filter", "b64encod"),
                ("test", "numbr"),
                ("filter", "shout")
            ]
        );
        assert_eq!(
            unknown_helpers(&env, "{{ x is not nothing }}"),
            vec![("test", "nothing")]
        );
    }

    #[test]
    fn helpers_and_builtins_are_known() {
        let env = environment();
        let source = "{{ now() | datetimeformat(format='%Y') }} {{ d | dateformat }} {{ t | timeformat }} \
                      {{ s | b64encode | b64decode | urlencode | upper | default('x') }} \
                      {% if s is defined and s is not none %}{{ s | replace('a', '|') }}{% endif %} \
                      {{ 'a | b' }} {{ s.is }}";
        assert_eq!(unknown_helpers(&env, source), Vec::<(&str, &str)>::new());
        assert!(is_function(&env, "now"));
        assert!(is_function(&env, "range"));
        assert!(!is_function(&env, "env"));
    }

    #[test]
    fn raw_blocks_and_strings_name_no_filter() {
        let env = environment();
        assert_eq!(
            unknown_helpers(&env, "{% raw %}{{ a | nope }}{% endraw %}{{ '| nope' }}"),
            Vec::<(&str, &str)>::new()
        );
    }
}
