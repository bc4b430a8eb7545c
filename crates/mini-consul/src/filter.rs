//! `?filter=`: a subset of Consul's boolean expression language (go-bexpr), evaluated on the JSON
//! of each result item.
//!
//! Supported: `Sel == v`, `Sel != v`, `Sel contains v`, `Sel not contains v`, `v in Sel`,
//! `v not in Sel`, `Sel is empty`, `Sel is not empty`, combined with `and`, `or`, `not` and
//! parentheses. Selectors are dotted field paths (`Service.Tags`, `Meta.env`, `Meta["k"]`);
//! a path through a list matches when any element does. Values are `"quoted"`, `` `raw` ``,
//! numbers, `true`/`false` or bare words. `matches` (regular expressions) is not supported.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Dot,
}

#[derive(Debug)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Eq(Vec<String>, String),
    Contains(Vec<String>, String),
    Empty(Vec<String>),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let cs: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' | ')' | '[' | ']' | '.' => {
                out.push(match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    _ => Tok::Dot,
                });
                i += 1;
            }
            '=' | '!' if cs.get(i + 1) == Some(&'=') => {
                out.push(Tok::Op(if c == '=' { "==" } else { "!=" }));
                i += 2;
            }
            '"' | '`' => {
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(&d) = cs.get(i) else {
                        return Err(format!("1:{}: unterminated string", i + 1));
                    };
                    i += 1;
                    if d == c {
                        break;
                    }
                    if d == '\\' && c == '"' {
                        let Some(&e) = cs.get(i) else { continue };
                        i += 1;
                        text.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                    } else {
                        text.push(d);
                    }
                }
                out.push(Tok::Str(text));
            }
            c if c.is_alphanumeric() || c == '_' || c == '-' || c == '/' || c == ':' => {
                let start = i;
                while i < cs.len() && (cs[i].is_alphanumeric() || "_-/:".contains(cs[i])) {
                    i += 1;
                }
                out.push(Tok::Word(cs[start..i].iter().collect()));
            }
            other => return Err(format!("1:{}: unexpected character {other:?}", i + 1)),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x == w)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.word("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.not()?;
        while self.word("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }
    fn not(&mut self) -> Result<Expr, String> {
        if self.word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::RParen) {
                return Err("expected \")\"".into());
            }
            return Ok(e);
        }
        self.matcher()
    }
    /// A dotted selector (or a bare value), or a quoted value.
    fn operand(&mut self) -> Result<(Vec<String>, bool), String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok((vec![s], true)),
            Some(Tok::Word(w)) => {
                let mut path = vec![w];
                loop {
                    match self.peek() {
                        Some(Tok::Dot) => {
                            self.pos += 1;
                            match self.next() {
                                Some(Tok::Word(w)) | Some(Tok::Str(w)) => path.push(w),
                                _ => return Err("expected a field name after \".\"".into()),
                            }
                        }
                        Some(Tok::LBracket) => {
                            self.pos += 1;
                            let (Some(Tok::Str(k) | Tok::Word(k)), Some(Tok::RBracket)) =
                                (self.next(), self.next())
                            else {
                                return Err("expected [\"key\"]".into());
                            };
                            path.push(k);
                        }
                        _ => return Ok((path, false)),
                    }
                }
            }
            other => Err(format!(
                "unexpected {other:?}, expected a selector or a value"
            )),
        }
    }
    fn value(&mut self) -> Result<String, String> {
        let (v, _) = self.operand()?;
        Ok(v.join("."))
    }
    fn matcher(&mut self) -> Result<Expr, String> {
        let (left, quoted) = self.operand()?;
        let negated = self.word("not");
        if negated {
            self.pos += 1;
        }
        let e = match self.next() {
            Some(Tok::Word(w)) if w == "in" => {
                let (sel, _) = self.operand()?;
                Expr::Contains(sel, left.join("."))
            }
            _ if quoted => return Err("a quoted value must be followed by \"in\"".into()),
            Some(Tok::Word(w)) if w == "contains" => Expr::Contains(left, self.value()?),
            Some(Tok::Word(w)) if w == "matches" => {
                return Err("mini-consul does not support \"matches\"".into());
            }
            Some(Tok::Word(w)) if w == "is" && !negated => {
                let not = self.word("not");
                if not {
                    self.pos += 1;
                }
                if !self.word("empty") {
                    return Err("expected \"empty\" after \"is\"".into());
                }
                self.pos += 1;
                let e = Expr::Empty(left);
                return Ok(if not { Expr::Not(Box::new(e)) } else { e });
            }
            Some(Tok::Op("==")) if !negated => Expr::Eq(left, self.value()?),
            Some(Tok::Op("!=")) if !negated => {
                return Ok(Expr::Not(Box::new(Expr::Eq(left, self.value()?))));
            }
            other => return Err(format!("unexpected {other:?}, expected a match operator")),
        };
        Ok(if negated { Expr::Not(Box::new(e)) } else { e })
    }
}

/// Parses a filter expression; errors read like Consul's.
pub fn parse(expr: &str) -> Result<Expr, String> {
    let fail = |e: String| format!("Failed to create boolean expression evaluator: {e}");
    let mut p = Parser {
        toks: lex(expr).map_err(fail)?,
        pos: 0,
    };
    let e = p.or().map_err(fail)?;
    if p.pos < p.toks.len() {
        return Err(fail(format!(
            "unexpected {:?} after the expression",
            p.toks[p.pos]
        )));
    }
    Ok(e)
}

/// Everything a selector reaches (lists along the way fan out).
fn resolve<'a>(v: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let Some((first, rest)) = path.split_first() else {
        return vec![v];
    };
    match v {
        Value::Object(m) => m.get(first).map(|x| resolve(x, rest)).unwrap_or_default(),
        Value::Array(items) => items.iter().flat_map(|i| resolve(i, path)).collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Expr {
    pub fn eval(&self, v: &Value) -> bool {
        match self {
            Expr::And(a, b) => a.eval(v) && b.eval(v),
            Expr::Or(a, b) => a.eval(v) || b.eval(v),
            Expr::Not(a) => !a.eval(v),
            Expr::Eq(sel, want) => resolve(v, sel)
                .iter()
                .any(|x| text(x).as_deref() == Some(want.as_str())),
            Expr::Contains(sel, want) => resolve(v, sel).iter().any(|x| match x {
                Value::Array(items) => items
                    .iter()
                    .any(|i| text(i).as_deref() == Some(want.as_str())),
                Value::Object(m) => m.contains_key(want),
                Value::String(s) => s.contains(want.as_str()),
                _ => false,
            }),
            Expr::Empty(sel) => resolve(v, sel).iter().all(|x| match x {
                Value::Null => true,
                Value::String(s) => s.is_empty(),
                Value::Array(a) => a.is_empty(),
                Value::Object(m) => m.is_empty(),
                _ => false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates() {
        let v = json!({"Service": "web", "ID": "web-1", "Tags": ["v1"], "Meta": {"env": "prod"},
                       "Checks": [{"Status": "passing"}, {"Status": "critical"}]});
        let t = |e: &str| parse(e).unwrap().eval(&v);
        assert!(t(r#"Service == "web""#));
        assert!(t("ID == web-1"));
        assert!(!t(r#"Service != "web""#));
        assert!(t(r#""v1" in Tags and Meta.env == prod"#));
        assert!(t(r#"Tags contains "v1" or Service == "x""#));
        assert!(t(r#"not (Service == "db")"#));
        assert!(t(r#"Checks.Status == "critical""#));
        assert!(t(r#"Meta["env"] == "prod""#));
        assert!(t("Meta.missing is empty"));
        assert!(parse("Service ==").is_err());
    }
}
