//! One-statement mode: plans `SELECT … FROM read_parquet('glob') …` by itself.
//!
//! Recognised shape (anything else runs whole on one executor, which is always correct):
//! `SELECT items FROM read_parquet('glob') [[AS] alias] [WHERE p] [GROUP BY keys]
//!  [ORDER BY names|ordinals] [LIMIT n [OFFSET m]]` where every item is a group key (a column
//! name, optionally qualified) or `sum|count|min|max|avg(expr)` (`count(*)` too), each
//! optionally `AS name`. It is split into a partial aggregation per partition (filter and
//! projection pushed down) and a final aggregation over the partial results.

/// The result of planning one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OneStatement {
    /// Per-partition SQL over `{0}` and final SQL over the combined partial results `{0}`.
    Split {
        glob: String,
        partial: String,
        final_sql: String,
    },
    /// The statement with its `read_parquet(…)` replaced by `{0}`, run on one executor over
    /// every file of `glob`.
    Whole { glob: String, sql: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct PlanError(pub String);

/// Byte ranges of `s` outside quotes and at parenthesis depth 0, as a mask.
fn top_level_mask(s: &str) -> Vec<bool> {
    let b = s.as_bytes();
    let mut mask = vec![false; b.len()];
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    for (i, &c) in b.iter().enumerate() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                b'\'' | b'"' => quote = Some(c),
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => depth -= 1,
                _ => mask[i] = depth == 0,
            },
        }
    }
    mask
}

/// Positions of the word `kw` (case-insensitive, word-bounded) at top level.
fn find_kw(s: &str, mask: &[bool], kw: &str) -> Vec<usize> {
    let lower = s.to_ascii_lowercase();
    let kw = kw.to_ascii_lowercase();
    let b = lower.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(off) = lower[from..].find(&kw) {
        let i = from + off;
        let end = i + kw.len();
        let word_start = i == 0 || !is_word(b[i - 1]);
        let word_end = end >= b.len() || !is_word(b[end]);
        if word_start && word_end && mask[i..end].iter().all(|&m| m) {
            out.push(i);
        }
        from = i + 1;
    }
    out
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// `GROUP BY`/`ORDER BY` with any whitespace between the words.
fn find_two(s: &str, mask: &[bool], a: &str, b: &str) -> Vec<usize> {
    find_kw(s, mask, a)
        .into_iter()
        .filter(|&i| {
            let rest = &s[i + a.len()..];
            let t = rest.trim_start();
            t.len() >= b.len()
                && t[..b.len()].eq_ignore_ascii_case(b)
                && t.as_bytes().get(b.len()).is_none_or(|&c| !is_word(c))
        })
        .collect()
}

fn split_top(s: &str, sep: u8) -> Vec<String> {
    let mask = top_level_mask(s);
    let mut parts = Vec::new();
    let mut start = 0;
    for (i, &c) in s.as_bytes().iter().enumerate() {
        if c == sep && mask[i] {
            parts.push(s[start..i].trim().to_string());
            start = i + 1;
        }
    }
    parts.push(s[start..].trim().to_string());
    parts
}

fn norm(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

fn is_ident_path(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(is_word) && !p.as_bytes()[0].is_ascii_digit())
}

/// Splits `expr [AS] name` at a top-level trailing `AS name`.
fn split_alias(item: &str) -> (String, Option<String>) {
    let mask = top_level_mask(item);
    if let Some(&i) = find_kw(item, &mask, "as").last() {
        let name = item[i + 2..].trim();
        let name_ok = is_ident_path(name) && !name.contains('.')
            || (name.starts_with('"') && name.ends_with('"') && name.len() >= 2);
        if name_ok {
            return (item[..i].trim().to_string(), Some(name.to_string()));
        }
    }
    (item.trim().to_string(), None)
}

/// `func(args)` with the parentheses enclosing everything after the name.
fn call_of(expr: &str) -> Option<(String, String)> {
    let open = expr.find('(')?;
    let name = expr[..open].trim();
    if !is_ident_path(name) || !expr.ends_with(')') {
        return None;
    }
    let inner = &expr[open + 1..expr.len() - 1];
    // The opening parenthesis must close at the very end.
    let mask = top_level_mask(inner);
    let depth_ok = {
        let mut d = 0i32;
        let mut ok = true;
        let mut quote: Option<u8> = None;
        for &c in inner.as_bytes() {
            match quote {
                Some(q) => {
                    if c == q {
                        quote = None
                    }
                }
                None => match c {
                    b'\'' | b'"' => quote = Some(c),
                    b'(' => d += 1,
                    b')' => {
                        d -= 1;
                        if d < 0 {
                            ok = false;
                        }
                    }
                    _ => {}
                },
            }
        }
        ok && d == 0
    };
    let _ = mask;
    depth_ok.then(|| (name.to_ascii_lowercase(), inner.trim().to_string()))
}

const AGGS: [&str; 5] = ["sum", "count", "min", "max", "avg"];

/// Finds the single `read_parquet('…')` of `statement`; returns (start, end, glob).
fn find_source(statement: &str) -> Result<(usize, usize, String), PlanError> {
    let lower = statement.to_ascii_lowercase();
    let hits: Vec<usize> = lower
        .match_indices("read_parquet")
        .map(|(i, _)| i)
        .collect();
    let [start] = hits[..] else {
        return Err(PlanError(format!(
            "one-statement mode needs exactly one read_parquet('<pond glob>'), found {}",
            hits.len()
        )));
    };
    let rest = &statement[start + "read_parquet".len()..];
    let t = rest.trim_start();
    let skip = rest.len() - t.len();
    let bad = || PlanError("read_parquet must take one quoted pond path or glob".to_string());
    let t = t.strip_prefix('(').ok_or_else(bad)?.trim_start();
    let t = t.strip_prefix('\'').ok_or_else(bad)?;
    let close = t.find('\'').ok_or_else(bad)?;
    let glob = t[..close].to_string();
    let after = t[close + 1..].trim_start();
    let after = after.strip_prefix(')').ok_or_else(bad)?;
    let end = statement.len() - after.len();
    let _ = skip;
    if !glob.starts_with('/') {
        return Err(PlanError(format!("{glob:?} is not an absolute pond path")));
    }
    Ok((start, end, glob))
}

/// Plans one statement.
pub fn plan(statement: &str) -> Result<OneStatement, PlanError> {
    let statement = statement.trim().trim_end_matches(';').trim();
    let (src_start, src_end, glob) = find_source(statement)?;
    let whole = OneStatement::Whole {
        glob: glob.clone(),
        sql: format!("{}{{0}}{}", &statement[..src_start], &statement[src_end..]),
    };
    Ok(split(statement, src_start, src_end, &glob).unwrap_or(whole))
}

/// The partial/final split, or `None` when the statement is not of the recognised shape.
fn split(s: &str, src_start: usize, src_end: usize, glob: &str) -> Option<OneStatement> {
    let mask = top_level_mask(s);
    for bad in [
        "join",
        "union",
        "intersect",
        "except",
        "with",
        "qualify",
        "window",
        "having",
        "distinct",
        "over",
        "pivot",
        "unpivot",
        "using",
        "sample",
        "tablesample",
    ] {
        if !find_kw(s, &mask, bad).is_empty() {
            return None;
        }
    }
    let select = find_kw(s, &mask, "select");
    let from = find_kw(s, &mask, "from");
    if select != [0] || from.len() != 1 {
        return None;
    }
    let from = from[0];
    let where_ = find_kw(s, &mask, "where");
    let group = find_two(s, &mask, "group", "by");
    let order = find_two(s, &mask, "order", "by");
    let limit = find_kw(s, &mask, "limit");
    if where_.len() > 1 || group.len() > 1 || order.len() > 1 || limit.len() > 1 {
        return None;
    }
    // Clauses must come in the order FROM < WHERE < GROUP BY < ORDER BY < LIMIT.
    let seq: Vec<usize> = [
        Some(from),
        where_.first().copied(),
        group.first().copied(),
        order.first().copied(),
        limit.first().copied(),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !seq.windows(2).all(|w| w[0] < w[1])
        || src_start < from
        || src_start > *seq.get(1).unwrap_or(&s.len())
    {
        return None;
    }
    let next = |after: usize| seq.iter().copied().find(|&p| p > after).unwrap_or(s.len());
    let items_txt = &s["select".len()..from];
    // FROM read_parquet('…') [[AS] alias]
    let from_tail = s[src_end..next(from)].trim();
    let alias = {
        let t = from_tail
            .strip_prefix_ci("as")
            .map(str::trim)
            .unwrap_or(from_tail);
        if t.is_empty() {
            None
        } else if is_ident_path(t) && !t.contains('.') {
            Some(t.to_string())
        } else {
            return None;
        }
    };
    if !s[from + 4..src_start].trim().is_empty() {
        return None;
    }
    let where_txt = where_
        .first()
        .map(|&w| s[w + 5..next(w)].trim().to_string());
    let keys: Vec<String> = match group.first() {
        Some(&g) => {
            let body = s[g..next(g)].trim();
            let body = body[5..].trim_start()[2..].trim();
            split_top(body, b',')
        }
        None => Vec::new(),
    };
    if keys.iter().any(|k| {
        k.is_empty() || k.eq_ignore_ascii_case("all") || k.bytes().all(|c| c.is_ascii_digit())
    }) {
        return None;
    }
    let tail = order
        .first()
        .or(limit.first())
        .map(|&o| s[o..].trim().to_string());
    if let Some(&o) = order.first() {
        let body = s[o..next(o)].trim();
        let body = body[5..].trim_start()[2..].trim();
        for item in split_top(body, b',') {
            let mut words = item.split_whitespace();
            let target = words.next()?;
            let name_ok = is_ident_path(target) && !target.contains('.');
            let ordinal = target.bytes().all(|c| c.is_ascii_digit());
            if !name_ok && !ordinal {
                return None;
            }
        }
    }

    if keys.is_empty() && !items_have_aggregate(items_txt) {
        // No aggregation: ORDER BY … LIMIT becomes a top-k per partition and a merge.
        let (&o, &l) = (order.first()?, limit.first()?);
        return topk(TopK {
            s,
            glob,
            items_txt,
            alias,
            where_txt,
            order_txt: s[o..next(o)].trim(),
            limit_txt: s[l..].trim(),
        });
    }

    // The items.
    let mut partial_cols: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS __k{i}"))
        .collect();
    let mut final_cols = Vec::new();
    let mut names = Vec::new();
    let mut has_agg = false;
    for (n, item) in split_top(items_txt, b',').into_iter().enumerate() {
        if item.is_empty() || item == "*" {
            return None;
        }
        let (expr, alias_name) = split_alias(&item);
        if let Some(ki) = keys.iter().position(|k| norm(k) == norm(&expr)) {
            let name = match alias_name {
                Some(a) => a,
                None if is_ident_path(&expr) => {
                    expr.rsplit('.').next().expect("non-empty").to_string()
                }
                None => return None,
            };
            final_cols.push(format!("__k{ki} AS {name}"));
            names.push(name);
            continue;
        }
        let (func, arg) = call_of(&expr)?;
        if !AGGS.contains(&func.as_str()) || arg.is_empty() {
            return None;
        }
        let arg_lower = arg.to_ascii_lowercase();
        if arg_lower.starts_with("distinct")
            || arg_lower.starts_with("all ")
            || AGGS.iter().any(|a| arg_lower.contains(&format!("{a}(")))
        {
            return None;
        }
        if arg == "*" && func != "count" {
            return None;
        }
        has_agg = true;
        let name = alias_name.unwrap_or_else(|| format!("\"{}\"", expr.replace('"', "\"\"")));
        let a = format!("__a{n}");
        match func.as_str() {
            "sum" | "min" | "max" => {
                partial_cols.push(format!("{func}({arg}) AS {a}"));
                let f = if func == "sum" { "sum" } else { func.as_str() };
                final_cols.push(format!("{f}({a}) AS {name}"));
            }
            "count" => {
                partial_cols.push(format!("count({arg}) AS {a}"));
                final_cols.push(format!("CAST(coalesce(sum({a}), 0) AS BIGINT) AS {name}"));
            }
            "avg" => {
                partial_cols.push(format!("sum({arg}) AS {a}s"));
                partial_cols.push(format!("count({arg}) AS {a}c"));
                final_cols.push(format!("CAST(sum({a}s) AS DOUBLE) / sum({a}c) AS {name}"));
            }
            _ => unreachable!("checked against AGGS"),
        }
        names.push(name);
    }
    if !has_agg && keys.is_empty() {
        return None;
    }
    if let Some(t) = &tail {
        // ORDER BY may name only output columns (or ordinals).
        let _ = t;
    }
    let group_partial = if keys.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", keys.join(", "))
    };
    let group_final = if keys.is_empty() {
        String::new()
    } else {
        format!(
            " GROUP BY {}",
            (0..keys.len())
                .map(|i| format!("__k{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let partial = format!(
        "SELECT {} FROM {{0}}{}{}{}",
        partial_cols.join(", "),
        alias.map(|a| format!(" AS {a}")).unwrap_or_default(),
        where_txt.map(|w| format!(" WHERE {w}")).unwrap_or_default(),
        group_partial,
    );
    let final_sql = format!(
        "SELECT {} FROM {{0}}{}{}",
        final_cols.join(", "),
        group_final,
        tail.map(|t| format!(" {t}")).unwrap_or_default()
    );
    Some(OneStatement::Split {
        glob: glob.to_string(),
        partial,
        final_sql,
    })
}

/// Whether any select item calls an aggregate (conservatively: the text `agg(` anywhere).
fn items_have_aggregate(items: &str) -> bool {
    let lower = items.to_ascii_lowercase();
    let b = lower.as_bytes();
    AGGS.iter().any(|a| {
        let mut from = 0;
        while let Some(off) = lower[from..].find(a) {
            let i = from + off;
            let before_ok = i == 0 || !is_word(b[i - 1]);
            let rest = lower[i + a.len()..].trim_start();
            if before_ok && rest.starts_with('(') {
                return true;
            }
            from = i + a.len();
        }
        false
    })
}

struct TopK<'a> {
    s: &'a str,
    glob: &'a str,
    items_txt: &'a str,
    alias: Option<String>,
    where_txt: Option<String>,
    /// `ORDER BY …` (without LIMIT).
    order_txt: &'a str,
    /// `LIMIT n [OFFSET m]`.
    limit_txt: &'a str,
}

/// `SELECT items FROM src [WHERE p] ORDER BY out-names LIMIT n [OFFSET m]` as a per-partition
/// `… ORDER BY … LIMIT n+m` and a final `SELECT * … ORDER BY … LIMIT n OFFSET m` over the
/// partial results. ORDER BY must name output columns (or ordinals) so that the final step
/// can sort by them too.
fn topk(t: TopK<'_>) -> Option<OneStatement> {
    let _ = t.s;
    let items = split_top(t.items_txt, b',');
    let star = items.len() == 1 && items[0] == "*";
    let mut names = Vec::new();
    if !star {
        for item in &items {
            let (expr, alias) = split_alias(item);
            match alias {
                Some(a) => names.push(norm(&a)),
                None if is_ident_path(&expr) => {
                    names.push(norm(expr.rsplit('.').next().expect("non-empty")))
                }
                None => return None,
            }
        }
    }
    let body = t.order_txt[5..].trim_start()[2..].trim();
    for item in split_top(body, b',') {
        let target = item.split_whitespace().next()?;
        if let Ok(k) = target.parse::<usize>() {
            if star || k == 0 || k > names.len() {
                return None;
            }
        } else if !star && !names.contains(&norm(target)) {
            return None;
        }
    }
    // LIMIT n [OFFSET m], integer literals only.
    let words: Vec<&str> = t.limit_txt.split_whitespace().collect();
    let (n, m): (u64, u64) = match words.as_slice() {
        [l, n] if l.eq_ignore_ascii_case("limit") => (n.parse().ok()?, 0),
        [l, n, o, m] if l.eq_ignore_ascii_case("limit") && o.eq_ignore_ascii_case("offset") => {
            (n.parse().ok()?, m.parse().ok()?)
        }
        _ => return None,
    };
    let partial = format!(
        "SELECT {} FROM {{0}}{}{} {} LIMIT {}",
        t.items_txt.trim(),
        t.alias.map(|a| format!(" AS {a}")).unwrap_or_default(),
        t.where_txt
            .map(|w| format!(" WHERE {w}"))
            .unwrap_or_default(),
        t.order_txt,
        n.checked_add(m)?
    );
    let final_sql = format!("SELECT * FROM {{0}} {} {}", t.order_txt, t.limit_txt);
    Some(OneStatement::Split {
        glob: t.glob.to_string(),
        partial,
        final_sql,
    })
}

trait StripCi {
    fn strip_prefix_ci(&self, p: &str) -> Option<&str>;
}

impl StripCi for str {
    fn strip_prefix_ci(&self, p: &str) -> Option<&str> {
        let ok = self.len() > p.len()
            && self[..p.len()].eq_ignore_ascii_case(p)
            && !is_word(self.as_bytes()[p.len()]);
        ok.then(|| &self[p.len()..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_splits_into_per_partition_limits() {
        let p = plan(
            "SELECT k, v AS value FROM read_parquet('/d/*.parquet') WHERE v > 3 ORDER BY value DESC, 1 LIMIT 10 OFFSET 5",
        )
        .unwrap();
        assert_eq!(
            p,
            OneStatement::Split {
                glob: "/d/*.parquet".into(),
                partial:
                    "SELECT k, v AS value FROM {0} WHERE v > 3 ORDER BY value DESC, 1 LIMIT 15"
                        .into(),
                final_sql: "SELECT * FROM {0} ORDER BY value DESC, 1 LIMIT 10 OFFSET 5".into(),
            }
        );
        let p = plan("SELECT * FROM read_parquet('/d/x.parquet') ORDER BY d LIMIT 3").unwrap();
        assert!(matches!(p, OneStatement::Split { .. }), "{p:?}");
        // ORDER BY a column that is not in the output: run whole.
        let p = plan("SELECT k FROM read_parquet('/d/x.parquet') ORDER BY v LIMIT 3").unwrap();
        assert!(matches!(p, OneStatement::Whole { .. }), "{p:?}");
        // No LIMIT: no top-k.
        let p = plan("SELECT k FROM read_parquet('/d/x.parquet') ORDER BY k").unwrap();
        assert!(matches!(p, OneStatement::Whole { .. }), "{p:?}");
        // An aggregate in the items is not a top-k.
        let p = plan("SELECT sum(v) AS s FROM read_parquet('/d/x.parquet') ORDER BY s LIMIT 3")
            .unwrap();
        match p {
            OneStatement::Split { partial, .. } => assert!(!partial.contains("LIMIT"), "{partial}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn group_by_splits() {
        let p = plan("SELECT k, sum(v) AS s, count(*) AS n, avg(v) AS a, min(v), max(v) AS mx FROM read_parquet('/d/*.parquet') WHERE v > 3 GROUP BY k ORDER BY k LIMIT 10").unwrap();
        let OneStatement::Split {
            glob,
            partial,
            final_sql,
        } = p
        else {
            panic!("{p:?}")
        };
        assert_eq!(glob, "/d/*.parquet");
        assert_eq!(
            partial,
            "SELECT k AS __k0, sum(v) AS __a1, count(*) AS __a2, sum(v) AS __a3s, count(v) AS __a3c, min(v) AS __a4, max(v) AS __a5 FROM {0} WHERE v > 3 GROUP BY k"
        );
        assert_eq!(
            final_sql,
            "SELECT __k0 AS k, sum(__a1) AS s, CAST(coalesce(sum(__a2), 0) AS BIGINT) AS n, CAST(sum(__a3s) AS DOUBLE) / sum(__a3c) AS a, min(__a4) AS \"min(v)\", max(__a5) AS mx FROM {0} GROUP BY __k0 ORDER BY k LIMIT 10"
        );
    }

    #[test]
    fn global_aggregate_splits() {
        let p = plan("select count(*) as n from read_parquet('/x.parquet')").unwrap();
        assert!(matches!(p, OneStatement::Split { .. }), "{p:?}");
    }

    #[test]
    fn other_shapes_run_whole() {
        for s in [
            "SELECT * FROM read_parquet('/d/*.parquet') WHERE x > 1",
            "SELECT k, count(DISTINCT v) FROM read_parquet('/d/*') GROUP BY k",
            "SELECT k, sum(v) FROM read_parquet('/d/*') GROUP BY k HAVING sum(v) > 1",
            "SELECT k, sum(v) FROM read_parquet('/d/*') GROUP BY k ORDER BY sum(v)",
            "SELECT k + 1, sum(v) FROM read_parquet('/d/*') GROUP BY k + 1",
        ] {
            let p = plan(s).unwrap();
            let OneStatement::Whole { sql, .. } = &p else {
                panic!("{s}: {p:?}")
            };
            assert!(sql.contains("{0}"), "{sql}");
            assert!(!sql.contains("read_parquet"), "{sql}");
        }
    }

    #[test]
    fn needs_one_source() {
        assert!(plan("SELECT 1").is_err());
        assert!(plan("SELECT * FROM read_parquet('rel/x')").is_err());
    }
}
