//! `GET /docs`: a self-contained HTML API reference generated from the OpenAPI document, with
//! one anchor per error code so that every error's `docs_url` (`/docs#validation_error`)
//! resolves. No scripts, fonts or styles from elsewhere: it works offline.

use std::fmt::Write as _;
use std::sync::LazyLock;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::ErrorCode;

static PAGE: LazyLock<String> = LazyLock::new(|| render(&super::openapi::document()));

/// The API reference as one HTML page.
#[utoipa::path(get, path = "/docs", tag = "operations", operation_id = "docs", security(()),
    responses((status = 200, description = "The API reference, generated from /openapi.json", content_type = "text/html; charset=utf-8", body = String)))]
pub async fn serve() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        PAGE.as_str(),
    )
        .into_response()
}

/// HTML-escapes text for element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An id usable in a URL fragment: lower case, letters, digits, `-` and `_`.
fn anchor(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// What a code means, for the error table: the HTTP status and the sentence a voice client
/// hears when nothing more specific applies.
fn error_rows() -> String {
    let mut out = String::new();
    for code in ErrorCode::ALL {
        let name = code.as_str();
        // UPSTREAM_UNAVAILABLE stands for two variants (502 and 504); one anchor each name.
        if out.contains(&format!("id=\"{}\"", name.to_ascii_lowercase())) {
            continue;
        }
        let status = if name == "UPSTREAM_UNAVAILABLE" {
            "502 or 504".to_string()
        } else {
            code.status().to_string()
        };
        let _ = writeln!(
            out,
            "<tr id=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            esc(&name.to_ascii_lowercase()),
            esc(name),
            esc(&status),
            esc(code.default_spoken())
        );
    }
    out
}

/// "#/components/schemas/Contact" → "Contact".
fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
}

/// A short type description of a schema: `string`, `Contact`, `array of Contact`, ...
fn type_of(schema: &Value) -> String {
    if let Some(name) = ref_name(schema) {
        return format!("<a href=\"#schema-{}\">{}</a>", anchor(name), esc(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(list) = schema.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = list.iter().map(type_of).collect();
            return parts.join(" or ");
        }
    }
    match schema.get("type") {
        Some(Value::String(t)) if t == "array" => {
            format!("array of {}", type_of(&schema["items"]))
        }
        Some(Value::String(t)) => esc(t),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(esc)
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".to_string(),
    }
}

fn text(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .map(esc)
        .unwrap_or_default()
}

/// Renders the whole page from the OpenAPI document.
pub fn render(doc: &Value) -> String {
    let mut body = String::new();
    let title = text(&doc["info"], "title");
    let version = text(&doc["info"], "version");
    let _ = write!(
        body,
        "<h1>{title} <small>{version}</small></h1>\n<p>{}</p>\n\
         <p>Machine-readable: <a href=\"/openapi.json\">/openapi.json</a>. Authenticate with \
         <code>Authorization: Bearer op_live_…</code>. Every error uses one envelope \
         <code>{{\"ok\": false, \"error\": {{code, message, details, docs_url, spoken_summary}}}}</code>; \
         its <code>docs_url</code> points to the code's row in <a href=\"#errors\">Errors</a>.</p>\n",
        text(&doc["info"], "description")
    );
    let mut toc = String::from("<nav><h2>Contents</h2><ul>\n");
    let mut ops = String::new();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    for (path, item) in &paths {
        let Some(item) = item.as_object() else {
            continue;
        };
        for (method, op) in item {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let id = op["operationId"].as_str().unwrap_or(path);
            let _ = writeln!(
                toc,
                "<li><a href=\"#op-{}\"><code>{} {}</code></a> {}</li>",
                anchor(id),
                method.to_uppercase(),
                esc(path),
                text(op, "summary")
            );
            let _ = write!(
                ops,
                "<section id=\"op-{}\"><h3><code>{} {}</code></h3>\n<p>{}</p><p>{}</p>\n",
                anchor(id),
                method.to_uppercase(),
                esc(path),
                text(op, "summary"),
                text(op, "description")
            );
            if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
                ops.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>\n");
                for p in params {
                    let _ = writeln!(
                        ops,
                        "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                        text(p, "name"),
                        if p["required"] == Value::Bool(true) {
                            " (required)"
                        } else {
                            ""
                        },
                        text(p, "in"),
                        type_of(&p["schema"]),
                        text(p, "description")
                    );
                }
                ops.push_str("</table>\n");
            }
            if let Some(content) = op["requestBody"]["content"].as_object() {
                for (mime, media) in content {
                    let _ = writeln!(
                        ops,
                        "<p>Request body ({}): {}</p>",
                        esc(mime),
                        type_of(&media["schema"])
                    );
                }
            }
            if let Some(responses) = op["responses"].as_object() {
                ops.push_str("<ul>\n");
                for (status, r) in responses {
                    let schema = r["content"]
                        .as_object()
                        .and_then(|c| c.values().next())
                        .map(|m| type_of(&m["schema"]))
                        .unwrap_or_default();
                    let _ = writeln!(
                        ops,
                        "<li><b>{}</b> {} {}</li>",
                        esc(status),
                        text(r, "description"),
                        schema
                    );
                }
                ops.push_str("</ul>\n");
            }
            ops.push_str("</section>\n");
        }
    }
    toc.push_str("<li><a href=\"#errors\">Errors</a></li><li><a href=\"#schemas\">Schemas</a></li></ul></nav>\n");
    body.push_str(&toc);
    body.push_str("<h2>Operations</h2>\n");
    body.push_str(&ops);
    let _ = write!(
        body,
        "<h2 id=\"errors\">Errors</h2>\n<table><tr><th>code</th><th>HTTP</th><th>default spoken summary</th></tr>\n{}</table>\n",
        error_rows()
    );
    body.push_str("<h2 id=\"schemas\">Schemas</h2>\n");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let _ = writeln!(
                body,
                "<section id=\"schema-{}\"><h3>{}</h3><p>{}</p>",
                anchor(name),
                esc(name),
                text(schema, "description")
            );
            if let Some(props) = schema["properties"].as_object() {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                body.push_str("<table><tr><th>field</th><th>type</th><th>description</th></tr>\n");
                for (field, p) in props {
                    let _ = writeln!(
                        body,
                        "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(field),
                        if required.contains(&field.as_str()) {
                            " (required)"
                        } else {
                            ""
                        },
                        type_of(p),
                        text(p, "description")
                    );
                }
                body.push_str("</table>\n");
            } else if let Some(values) = schema["enum"].as_array() {
                let values: Vec<String> = values
                    .iter()
                    .map(|v| format!("<code>{}</code>", esc(&v.to_string())))
                    .collect();
                let _ = writeln!(body, "<p>One of: {}</p>", values.join(", "));
            }
            body.push_str("</section>\n");
        }
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} API reference</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}}\
         code{{background:#f3f3f3;padding:0 .2em}}table{{border-collapse:collapse;margin:.5rem 0}}\
         td,th{{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}}\
         section{{border-top:1px solid #eee;margin-top:1rem}}tr:target{{background:#fff3c4}}\
         </style></head><body>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_an_anchor_and_nothing_is_fetched() {
        let page = render(&crate::http::openapi::document());
        for code in ErrorCode::ALL {
            let e = crate::error::ApiError::new(*code, "x");
            let url = e.docs_url();
            let fragment = url.trim_start_matches("/docs#");
            assert!(
                page.contains(&format!("id=\"{fragment}\"")),
                "{url} has no anchor"
            );
        }
        assert!(page.contains("/api/v1/native/outreachpilot"));
        assert!(page.contains("id=\"schema-settings\""));
        assert!(!page.contains("<script"), "no scripts");
        for external in ["src=\"http", "href=\"http", "@import", "url("] {
            assert!(
                !page.contains(external),
                "nothing loaded from elsewhere: {external}"
            );
        }
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(anchor("getSettings"), "getsettings");
    }
}
