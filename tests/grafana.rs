//! The Grafana dashboard `contrib/grafana/tern.json` (README, "Metrics"):
//! it imports as Grafana's own exports do (the Prometheus data source is an
//! input the importer picks, and every query uses it), and every metric its
//! PromQL queries is a series that a running tern exports at `/metrics`, so
//! that a renamed or removed metric fails here rather than leave a panel
//! empty.
//!
//! The metric names are read with a small PromQL lexer (below): label
//! matchers, range and subquery brackets, strings, numbers and durations,
//! Grafana's `$variables`, function and aggregation names (an identifier
//! followed by `(`, and the aggregation operators), the label lists of `by`, `without`, `on`, `ignoring`,
//! `group_left` and `group_right`, and PromQL's keywords are not metric
//! names; every other identifier is one. The series tern exports are
//! derived from the `# TYPE` lines of a scrape: a counter `x` is stored as
//! `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`, and so on.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::TernServer;
use common::metrics::{metrics_addr, scrape};
use serde_json::Value;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/tern.json");
/// The data source input every query uses, as Grafana names it in an export.
const DATASOURCE_INPUT: &str = "DS_PROMETHEUS";

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

#[test]
fn the_dashboard_imports_with_the_prometheus_data_source_as_an_input() {
    let dashboard = dashboard();
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty()), "a uid, so a re-import replaces it");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "a schema with data source references");

    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    let input = inputs.iter().find(|i| i["name"] == DATASOURCE_INPUT).expect("the data source input");
    assert_eq!(input["type"], "datasource");
    assert_eq!(input["pluginId"], "prometheus");

    // Every reference to a data source is the input, but the built-in
    // annotations' own.
    let mut references = Vec::new();
    collect_objects(&dashboard, "datasource", &mut references);
    let input_ref = format!("${{{DATASOURCE_INPUT}}}");
    for reference in &references {
        if reference["uid"] == "-- Grafana --" {
            continue;
        }
        assert_eq!(reference["type"], "prometheus", "{reference}");
        assert_eq!(reference["uid"].as_str(), Some(input_ref.as_str()), "{reference}");
    }

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(panel["id"].as_u64().expect("a numeric id")), "panel ids are unique: {title}");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().expect("gridPos.x"), grid["w"].as_u64().expect("gridPos.w"));
        assert!(w > 0 && x + w <= 24, "{title} fits Grafana's 24 columns");
        if panel["type"] == "row" {
            continue;
        }
        assert!(!panel["datasource"].is_null(), "{title} names its data source");
        let targets = panel["targets"].as_array().expect("queries");
        assert!(!targets.is_empty(), "{title} queries something");
        let refs: BTreeSet<&str> = targets.iter().map(|t| t["refId"].as_str().expect("refId")).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds are unique");
        for target in targets {
            assert!(target["expr"].as_str().is_some_and(|e| !e.trim().is_empty()), "{title}: {target}");
        }
    }
}

#[test]
fn every_metric_the_dashboard_queries_is_one_tern_exports() {
    let server = TernServer::start(&["--metrics-listen", "127.0.0.1:0"]);
    let scraped = scrape(metrics_addr(&server));
    let exported = exported_series(&scraped);

    let queried = queried_metrics(&dashboard());
    assert!(!queried.is_empty(), "the dashboard queries no metric");
    let unknown: Vec<_> = queried.iter().filter(|(metric, _)| !exported.contains(*metric)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics tern does not export (metric, query): {unknown:#?}\nexported: {exported:#?}"
    );

    // What an operator of a relay watches first is on it.
    for metric in [
        "tern_allocations",
        "tern_allocations_created_total",
        "tern_relayed_packets_total",
        "tern_relayed_bytes_total",
        "tern_dropped_packets_total",
        "tern_auth_failures_total",
        "tern_tcp_connections_total",
        "tern_open_connections",
        "tern_draining",
        "tern_config_generation",
        "tern_config_reload_failures_total",
    ] {
        assert!(queried.contains_key(metric), "the dashboard does not show {metric}");
    }
}

/// Every series name a scrape can hold, from its `# TYPE` lines (OpenMetrics
/// names a family; Prometheus stores its samples under these names). Every
/// sample of the scrape must be one of them, which checks the derivation.
fn exported_series(scraped: &str) -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for line in scraped.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else { continue };
        let (family, kind) = declared.split_once(' ').expect("# TYPE name type");
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        series.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
    }
    for line in scraped.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        assert!(series.contains(name), "sample {line:?} is of no declared family");
    }
    series
}

/// Each metric the dashboard queries, with one query that uses it: the
/// PromQL of panels and annotations (every `expr`), and the metrics of the
/// template variables' `label_values(...)` queries.
fn queried_metrics(dashboard: &Value) -> BTreeMap<String, String> {
    let mut queries = Vec::new();
    collect_strings(dashboard, "expr", &mut queries);
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).expect("a variable's query");
        queries.extend(variable_promql(query).map(str::to_owned));
    }
    let mut metrics = BTreeMap::new();
    for query in queries {
        for metric in metric_names(&query) {
            metrics.entry(metric).or_insert_with(|| query.clone());
        }
    }
    metrics
}

/// The PromQL inside a Grafana Prometheus variable query:
/// `label_values(SELECTOR, LABEL)` and `query_result(QUERY)` hold some;
/// `label_values(LABEL)`, `label_names()` and `metrics(REGEX)` none.
fn variable_promql(query: &str) -> Option<&str> {
    let query = query.trim();
    if let Some(args) = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
        return args.rsplit_once(',').map(|(selector, _label)| selector);
    }
    if let Some(inner) = query.strip_prefix("query_result(").and_then(|q| q.strip_suffix(')')) {
        return Some(inner);
    }
    assert!(
        query.starts_with("label_names(") || query.starts_with("metrics("),
        "a variable query this test cannot read: {query}"
    );
    None
}

/// Every object under `key` anywhere in `value`.
fn collect_objects<'a>(value: &'a Value, key: &str, found: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key && v.is_object() {
                    found.push(v);
                }
                collect_objects(v, key, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_objects(v, key, found)),
        _ => {}
    }
}

/// Every string under `key` anywhere in `value`.
fn collect_strings(value: &Value, key: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v.as_str() {
                    Some(s) if k == key => found.push(s.to_owned()),
                    _ => collect_strings(v, key, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, key, found)),
        _ => {}
    }
}

/// Keywords after which a parenthesised list holds label names.
const LABEL_LIST_KEYWORDS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
/// PromQL's other keywords: the aggregation operators (`sum by (l) (x)`
/// puts a label list between the name and its parenthesis), the binary set
/// operators, `bool`, `offset`, and the float literals.
const KEYWORDS: [&str; 21] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The metric names in one PromQL expression (with Grafana's `$variables`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '{' {
            let end = skip_group(&chars, i, '{', '}');
            let matchers: String = chars[i..end].iter().collect();
            assert!(!matchers.contains("__name__"), "{expr}: a __name__ matcher, which this test cannot follow");
            i = end;
        } else if c == '[' {
            i = skip_group(&chars, i, '[', ']');
        } else if c == '$' {
            // $var, ${var}, ${var:format}, $__rate_interval.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '{', '}');
            } else {
                i = skip_while(&chars, i, is_word_char);
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // Numbers (1e3, 0x1f) and durations (5m, 1h30m).
            i = skip_while(&chars, i, |c| is_word_char(c) || c == '.');
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let end = skip_while(&chars, i, |c| is_word_char(c) || c == ':');
            let word: String = chars[i..end].iter().collect();
            let next = skip_while(&chars, end, char::is_whitespace);
            let opens = chars.get(next) == Some(&'(');
            i = end;
            if LABEL_LIST_KEYWORDS.contains(&word.as_str()) {
                if opens {
                    i = skip_group(&chars, next, '(', ')');
                }
            } else if !opens && !KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn skip_while(chars: &[char], mut i: usize, keep: impl Fn(char) -> bool) -> usize {
    while chars.get(i).is_some_and(|&c| keep(c)) {
        i += 1;
    }
    i
}

/// The index just past the string literal that starts at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            // Raw (backtick) strings have no escapes.
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    panic!("unterminated string in {:?}", chars.iter().collect::<String>())
}

/// The index just past the group that opens at `start`, nested groups and
/// strings inside it included.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unbalanced {open}{close} in {:?}", chars.iter().collect::<String>())
}

#[test]
fn the_lexer_finds_metric_names_and_nothing_else() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (reason) (rate(tern_dropped_packets_total{instance=~"$instance", reason!="a}b"}[$__rate_interval])) * 8"#
        ),
        ["tern_dropped_packets_total"]
    );
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum without (instance) (rate(a_bucket[5m]))) / on (job) group_left (version) b_info"
        ),
        ["a_bucket", "b_info"]
    );
    assert_eq!(names("sum(x) by (le) > bool 1e3 and y offset 1h30m or z @ 1609746000"), ["x", "y", "z"]);
    assert_eq!(names("max_over_time(deriv(rate(m_total[5m])[30m:1m])[1h:]) unless Inf"), ["m_total"]);
    assert_eq!(
        names(r#"label_replace(up:recorded, "dst", "$1", "src", "(.*)") * ${factor} + vector(0) - time()"#),
        ["up:recorded"]
    );
    assert_eq!(names(r"count_values(`le\`, a) + .5"), ["a"]);
    assert_eq!(variable_promql("label_values(tern_workers{job=\"t\"}, instance)"), Some("tern_workers{job=\"t\"}"));
    assert_eq!(variable_promql("label_values(instance)"), None);
}

#[test]
fn exported_series_follow_the_openmetrics_types() {
    let scraped = "# TYPE a counter\na_total 1\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n\
                   # TYPE g gauge\ng 2\n# EOF\n";
    let series = exported_series(scraped);
    for name in ["a_total", "h_bucket", "h_sum", "h_count", "g"] {
        assert!(series.contains(name), "{name}: {series:?}");
    }
    for name in ["a", "a_bucket", "g_total", "g_count", "h"] {
        assert!(!series.contains(name), "{name}: {series:?}");
    }
}
