//! The live dashboard: one HTML page embedded in the binary, served at `/`
//! of the admin listener without a token.
//!
//! The page holds no secret and the server keeps nothing for it: it asks
//! for the token, keeps it in the tab's `sessionStorage`, and calls the API
//! with it every second like any other client. What it shows over time
//! (rates, the graphs' last minutes) it computes from successive polls.
//!
//! Its one style sheet and one script are inline and allowed by their
//! SHA-256 in the Content-Security-Policy, which allows nothing else: no
//! other script or style (no inline handlers, no `style` attributes), no
//! loads from anywhere but the API of this origin, no framing, no forms
//! sent anywhere.

use std::sync::LazyLock;

use axum::http::HeaderValue;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

const PAGE: &str = include_str!("dashboard.html");

static POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&content_security_policy(PAGE))
        .expect("the policy is ASCII: directives and base64 (the page is checked by a test)")
});

/// `GET /`: the page.
pub async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (CONTENT_SECURITY_POLICY, POLICY.clone()),
            (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        PAGE,
    )
        .into_response()
}

/// The policy for `page`: its inline `<style>` and `<script>` by hash, the
/// API of this origin, and nothing else.
fn content_security_policy(page: &str) -> String {
    let hash = |element: &str| {
        let text = inline(page, element).unwrap_or_default();
        format!("'sha256-{}'", STANDARD.encode(Sha256::digest(text.as_bytes())))
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("script"),
        hash("style"),
    )
}

/// The text of the first `<element>` of `page`, exactly as the browser
/// hashes it.
fn inline<'a>(page: &'a str, element: &str) -> Option<&'a str> {
    let open = format!("<{element}>");
    let start = page.find(&open)? + open.len();
    let end = start + page[start..].find(&format!("</{element}>"))?;
    Some(&page[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_inline_style_and_script_by_hash_and_nothing_external() {
        let policy = content_security_policy("<style>a</style><p>x</p><script>b</script>");
        // sha256("b") and sha256("a"), base64.
        assert!(policy.contains("script-src 'sha256-PiPoFgA5WUoziU9lZOGxNIu9egCI1CxKy3PurtWcAJ0=';"), "{policy}");
        assert!(policy.contains("style-src 'sha256-ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs=';"), "{policy}");
        assert!(policy.starts_with("default-src 'none';") && policy.contains("frame-ancestors 'none'"));
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(HeaderValue::from_str(&content_security_policy(PAGE)).is_ok());
    }

    /// What the policy would block without a word: a second script or
    /// style, inline handlers and style attributes, anything from elsewhere.
    #[test]
    fn the_page_needs_nothing_the_policy_forbids() {
        for element in ["script", "style"] {
            assert_eq!(PAGE.matches(&format!("<{element}")).count(), 1, "one <{element}> element");
            assert!(inline(PAGE, element).is_some_and(|text| text.len() > 100), "<{element}> is found");
        }
        let lower = PAGE.to_ascii_lowercase();
        for forbidden in ["javascript:", "http://", "https://", "//cdn", "@import", "url(", "<link", "<img", "eval("] {
            assert!(!lower.contains(forbidden), "the page must not use {forbidden:?}");
        }
        let markup = lower.replace(inline(&lower, "script").expect("found above"), "");
        let handler = markup.split(|c: char| c.is_whitespace()).any(|word| {
            let name = word.split('=').next().unwrap_or_default();
            word.contains('=')
                && name.len() > 2
                && name.starts_with("on")
                && name.chars().all(|c| c.is_ascii_lowercase())
        });
        assert!(!markup.contains(" style="), "no style attributes");
        assert!(!handler, "no inline event handler attributes (onclick= and the like)");
    }
}
