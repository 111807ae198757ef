//! `mcpAuthorization` rules: a small expression language in the shape of the CEL rules
//! agentgateway's docs use (`mcp.tool.name == "echo" && jwt.sub == "alice"`,
//! `"admin" in jwt.groups`, `!`, `||`, `.startsWith(...)`, `has(jwt.email)`), parsed once at
//! load time (errors name the column) and evaluated over a request's variables. No CEL engine:
//! literals, member access, indexing, lists, comparisons, `in`, the logical operators and a
//! handful of string functions.

use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// The variables a rule may name.
pub const ROOTS: [&str; 3] = ["mcp", "jwt", "apiKey"];
/// Deepest nesting a rule may have (parser recursion bound).
const MAX_DEPTH: usize = 64;
/// Longest rule accepted.
pub const MAX_RULE_LEN: usize = 4096;

/// A rule that does not parse: what is wrong and where (1-based column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(&'static str),
    End,
}

/// Splits `src` into tokens, each with its 0-based char offset.
fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, m: &str| ParseError {
        column: at + 1,
        message: m.to_string(),
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), start));
            continue;
        }
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                // `1.x` is a member access on a number only in nonsense rules; treat a dot
                // followed by a digit as part of the number.
                if chars[i] == '.' && !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    break;
                }
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text.parse().map_err(|_| err(start, "bad number"))?;
            out.push((Tok::Num(n), start));
            continue;
        }
        if c == '"' || c == '\'' {
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&d) = chars.get(i) else {
                    return Err(err(start, "unterminated string"));
                };
                i += 1;
                match d {
                    d if d == c => break,
                    '\\' => {
                        let Some(&e) = chars.get(i) else {
                            return Err(err(start, "unterminated string"));
                        };
                        i += 1;
                        s.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            '\\' | '"' | '\'' => e,
                            _ => return Err(err(i - 2, "unknown escape")),
                        });
                    }
                    d => s.push(d),
                }
            }
            out.push((Tok::Str(s), start));
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let op = match two.as_str() {
            "==" => Some("=="),
            "!=" => Some("!="),
            "<=" => Some("<="),
            ">=" => Some(">="),
            "&&" => Some("&&"),
            "||" => Some("||"),
            _ => None,
        };
        if let Some(op) = op {
            out.push((Tok::Op(op), start));
            i += 2;
            continue;
        }
        let op = match c {
            '!' => "!",
            '<' => "<",
            '>' => ">",
            '(' => "(",
            ')' => ")",
            '[' => "[",
            ']' => "]",
            '.' => ".",
            ',' => ",",
            '-' => "-",
            '=' => return Err(err(start, "`=` is not an operator; compare with `==`")),
            _ => return Err(err(start, &format!("unexpected character {c:?}"))),
        };
        out.push((Tok::Op(op), start));
        i += 1;
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    StartsWith,
    EndsWith,
    Contains,
    Size,
    Has,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Lit(Value),
    Var(String),
    Member(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
    List(Vec<Expr>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].0
    }

    fn at(&self) -> usize {
        self.toks[self.pos.min(self.toks.len() - 1)].1
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            column: self.at() + 1,
            message: message.into(),
        })
    }

    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Tok::Op(o) if *o == op) {
            self.pos += 1;
            return true;
        }
        false
    }

    fn expect(&mut self, op: &str) -> Result<(), ParseError> {
        if self.eat(op) {
            return Ok(());
        }
        self.fail(format!("expected `{op}`"))
    }

    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail("the rule nests too deeply");
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.deeper()?;
        let mut e = self.and()?;
        while self.eat("||") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        self.depth -= 1;
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.relation()?;
        while self.eat("&&") {
            e = Expr::And(Box::new(e), Box::new(self.relation()?));
        }
        Ok(e)
    }

    fn relation(&mut self) -> Result<Expr, ParseError> {
        let left = self.unary()?;
        let op = match self.peek() {
            Tok::Op("==") => Cmp::Eq,
            Tok::Op("!=") => Cmp::Ne,
            Tok::Op("<") => Cmp::Lt,
            Tok::Op("<=") => Cmp::Le,
            Tok::Op(">") => Cmp::Gt,
            Tok::Op(">=") => Cmp::Ge,
            Tok::Ident(i) if i == "in" => Cmp::In,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.unary()?;
        if matches!(self.peek(), Tok::Op("==" | "!=" | "<" | "<=" | ">" | ">=")) {
            return self.fail("comparisons do not chain; use `&&`");
        }
        Ok(Expr::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat("!") {
            self.deeper()?;
            let e = Expr::Not(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(e);
        }
        if self.eat("-") {
            self.deeper()?;
            let e = Expr::Neg(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(e);
        }
        self.postfix()
    }

    fn args(&mut self) -> Result<Vec<Expr>, ParseError> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.or()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let at = self.at();
                let Tok::Ident(name) = self.peek().clone() else {
                    return self.fail("expected a field or method name after `.`");
                };
                self.pos += 1;
                if self.eat("(") {
                    let func = match name.as_str() {
                        "startsWith" => Func::StartsWith,
                        "endsWith" => Func::EndsWith,
                        "contains" => Func::Contains,
                        "size" => Func::Size,
                        _ => {
                            return Err(ParseError {
                                column: at + 1,
                                message: format!(
                                    "unknown method `{name}` (known: startsWith, endsWith, contains, size)"
                                ),
                            })
                        }
                    };
                    let mut args = vec![e];
                    args.extend(self.args()?);
                    let want = if func == Func::Size { 1 } else { 2 };
                    if args.len() != want {
                        return Err(ParseError {
                            column: at + 1,
                            message: format!("`{name}` takes {} argument(s)", want - 1),
                        });
                    }
                    e = Expr::Call(func, args);
                } else {
                    e = Expr::Member(Box::new(e), name);
                }
            } else if self.eat("[") {
                let idx = self.or()?;
                self.expect("]")?;
                e = Expr::Index(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let at = self.at();
        let tok = self.peek().clone();
        self.pos += 1;
        match tok {
            Tok::Str(s) => Ok(Expr::Lit(Value::String(s))),
            Tok::Num(n) => Ok(Expr::Lit(
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
            )),
            Tok::Ident(i) => match i.as_str() {
                "true" => Ok(Expr::Lit(Value::Bool(true))),
                "false" => Ok(Expr::Lit(Value::Bool(false))),
                "null" => Ok(Expr::Lit(Value::Null)),
                "has" | "size" if self.eat("(") => {
                    let args = self.args()?;
                    if args.len() != 1 {
                        return Err(ParseError {
                            column: at + 1,
                            message: format!("`{i}` takes one argument"),
                        });
                    }
                    if i == "has" {
                        if !matches!(args[0], Expr::Member(..)) {
                            return Err(ParseError {
                                column: at + 1,
                                message: "`has` takes a field, such as has(jwt.email)".into(),
                            });
                        }
                        return Ok(Expr::Call(Func::Has, args));
                    }
                    Ok(Expr::Call(Func::Size, args))
                }
                _ if ROOTS.contains(&i.as_str()) => Ok(Expr::Var(i)),
                _ if self.eat("(") => Err(ParseError {
                    column: at + 1,
                    message: format!("unknown function `{i}` (known: has, size)"),
                }),
                _ => Err(ParseError {
                    column: at + 1,
                    message: format!("unknown variable `{i}` (known: {})", ROOTS.join(", ")),
                }),
            },
            Tok::Op("(") => {
                let e = self.or()?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.eat("]") {
                    loop {
                        items.push(self.or()?);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok(Expr::List(items))
            }
            Tok::End => Err(ParseError {
                column: at + 1,
                message: "unexpected end of the rule".into(),
            }),
            Tok::Op(o) => Err(ParseError {
                column: at + 1,
                message: format!("unexpected `{o}`"),
            }),
        }
    }
}

/// One parsed rule; `text` is kept for log lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub text: String,
    expr: Expr,
}

impl Rule {
    pub fn parse(text: &str) -> Result<Rule, ParseError> {
        if text.len() > MAX_RULE_LEN {
            return Err(ParseError {
                column: 1,
                message: format!("a rule is at most {MAX_RULE_LEN} bytes"),
            });
        }
        let mut p = Parser {
            toks: lex(text)?,
            pos: 0,
            depth: 0,
        };
        let expr = p.or()?;
        if *p.peek() != Tok::End {
            return p.fail("unexpected text after the end of the rule");
        }
        Ok(Rule {
            text: text.to_string(),
            expr,
        })
    }

    /// True, false, or None when the rule cannot be evaluated for this request (a missing
    /// field, a type mismatch): such a rule neither allows nor spares a request from a deny.
    pub fn eval(&self, vars: &Vars<'_>) -> Option<bool> {
        match eval(&self.expr, vars).ok()? {
            Cow::Borrowed(Value::Bool(b)) => Some(*b),
            Cow::Owned(Value::Bool(b)) => Some(b),
            _ => None,
        }
    }
}

/// What a rule sees: `mcp` (the tool, prompt or resource asked for), and the principal's
/// `jwt` claims or `apiKey` metadata when it has them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Vars<'a> {
    pub mcp: Option<&'a Value>,
    pub jwt: Option<&'a Value>,
    pub api_key: Option<&'a Value>,
}

type Res<'a> = Result<Cow<'a, Value>, ()>;

fn truth(v: &Value) -> Result<bool, ()> {
    v.as_bool().ok_or(())
}

fn eval<'a>(e: &'a Expr, vars: &Vars<'a>) -> Res<'a> {
    match e {
        Expr::Lit(v) => Ok(Cow::Borrowed(v)),
        Expr::Var(name) => match name.as_str() {
            "mcp" => vars.mcp.map(Cow::Borrowed).ok_or(()),
            "jwt" => vars.jwt.map(Cow::Borrowed).ok_or(()),
            "apiKey" => vars.api_key.map(Cow::Borrowed).ok_or(()),
            _ => Err(()),
        },
        Expr::Member(obj, field) => match eval(obj, vars)? {
            Cow::Borrowed(v) => v.get(field.as_str()).map(Cow::Borrowed).ok_or(()),
            Cow::Owned(v) => v.get(field.as_str()).cloned().map(Cow::Owned).ok_or(()),
        },
        Expr::Index(obj, idx) => {
            let i = eval(idx, vars)?;
            let pick = |v: &Value| -> Option<Value> {
                match (v, i.as_ref()) {
                    (Value::Array(a), Value::Number(n)) => {
                        n.as_f64().and_then(|f| a.get(f as usize)).cloned()
                    }
                    (Value::Object(m), Value::String(k)) => m.get(k).cloned(),
                    _ => None,
                }
            };
            let v = eval(obj, vars)?;
            pick(v.as_ref()).map(Cow::Owned).ok_or(())
        }
        Expr::List(items) => {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                out.push(eval(i, vars)?.into_owned());
            }
            Ok(Cow::Owned(Value::Array(out)))
        }
        Expr::Not(x) => {
            let v = eval(x, vars)?;
            Ok(Cow::Owned(Value::Bool(!truth(&v)?)))
        }
        Expr::Neg(x) => {
            let n = eval(x, vars)?.as_f64().ok_or(())?;
            Ok(Cow::Owned(serde_json::json!(-n)))
        }
        Expr::And(a, b) => logic(a, b, vars, false),
        Expr::Or(a, b) => logic(a, b, vars, true),
        Expr::Cmp(op, a, b) => {
            let (l, r) = (eval(a, vars)?, eval(b, vars)?);
            compare(*op, &l, &r).map(|b| Cow::Owned(Value::Bool(b)))
        }
        Expr::Call(f, args) => call(*f, args, vars),
    }
}

/// `&&` (`decisive` false) and `||` (`decisive` true), with CEL's commutative logic: the
/// decisive value on either side wins, even over an error on the other.
fn logic<'a>(a: &'a Expr, b: &'a Expr, vars: &Vars<'a>, decisive: bool) -> Res<'a> {
    let l = eval(a, vars).and_then(|v| truth(&v));
    if l == Ok(decisive) {
        return Ok(Cow::Owned(Value::Bool(decisive)));
    }
    let r = eval(b, vars).and_then(|v| truth(&v));
    match (l, r) {
        (_, Ok(x)) if x == decisive => Ok(Cow::Owned(Value::Bool(decisive))),
        (Ok(_), Ok(_)) => Ok(Cow::Owned(Value::Bool(!decisive))),
        _ => Err(()),
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn compare(op: Cmp, l: &Value, r: &Value) -> Result<bool, ()> {
    use std::cmp::Ordering;
    let order = || -> Result<Ordering, ()> {
        match (l, r) {
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .zip(y.as_f64())
                .and_then(|(x, y)| x.partial_cmp(&y))
                .ok_or(()),
            (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
            _ => Err(()),
        }
    };
    Ok(match op {
        Cmp::Eq => equal(l, r),
        Cmp::Ne => !equal(l, r),
        Cmp::Lt => order()? == Ordering::Less,
        Cmp::Le => order()? != Ordering::Greater,
        Cmp::Gt => order()? == Ordering::Greater,
        Cmp::Ge => order()? != Ordering::Less,
        Cmp::In => match r {
            Value::Array(items) => items.iter().any(|i| equal(i, l)),
            Value::Object(m) => m.contains_key(l.as_str().ok_or(())?),
            _ => return Err(()),
        },
    })
}

fn call<'a>(f: Func, args: &'a [Expr], vars: &Vars<'a>) -> Res<'a> {
    let out = match f {
        Func::Has => {
            let Some(Expr::Member(obj, field)) = args.first() else {
                return Err(());
            };
            match eval(obj, vars) {
                Ok(v) => Value::Bool(v.get(field.as_str()).is_some()),
                Err(()) => Value::Bool(false),
            }
        }
        Func::Size => {
            let v = eval(args.first().ok_or(())?, vars)?;
            let n = match v.as_ref() {
                Value::String(s) => s.chars().count(),
                Value::Array(a) => a.len(),
                Value::Object(m) => m.len(),
                _ => return Err(()),
            };
            serde_json::json!(n)
        }
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let s = eval(args.first().ok_or(())?, vars)?;
            let t = eval(args.get(1).ok_or(())?, vars)?;
            let (Value::String(s), Value::String(t)) = (s.as_ref(), t.as_ref()) else {
                return Err(());
            };
            Value::Bool(match f {
                Func::StartsWith => s.starts_with(t.as_str()),
                Func::EndsWith => s.ends_with(t.as_str()),
                _ => s.contains(t.as_str()),
            })
        }
    };
    Ok(Cow::Owned(out))
}

/// A route's `mcpAuthorization`: allow, deny and require rules (a plain string is an allow).
/// A request passes when no deny rule matches, every require rule holds, and some allow rule
/// matches (or there are none). A rule that cannot be evaluated (a missing field: a tool
/// rule asked about a prompt, a claim the token lacks) does not match: it neither allows nor
/// denies, and a require rule that cannot be evaluated fails.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
    pub require: Vec<Rule>,
}

impl RuleSet {
    pub fn permits(&self, vars: &Vars<'_>) -> bool {
        if self.deny.iter().any(|r| r.eval(vars) == Some(true)) {
            return false;
        }
        if self.require.iter().any(|r| r.eval(vars) != Some(true)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|r| r.eval(vars) == Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(rule: &str, mcp: Value, jwt: Option<Value>) -> Option<bool> {
        let r = Rule::parse(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
        let vars = Vars {
            mcp: Some(&mcp),
            jwt: jwt.as_ref(),
            api_key: None,
        };
        r.eval(&vars)
    }

    #[test]
    fn the_forms_agentgateway_documents() {
        let tool = json!({"tool": {"name": "echo", "target": "demo"}});
        let alice =
            json!({"sub": "alice", "groups": ["dev", "admin"], "nested": {"key": "value"}, "n": 3});
        let t = |r: &str| check(r, tool.clone(), Some(alice.clone()));
        assert_eq!(t(r#"mcp.tool.name == "echo""#), Some(true));
        assert_eq!(t(r#"mcp.tool.name == 'add'"#), Some(false));
        assert_eq!(
            t(r#"jwt.sub == "alice" && mcp.tool.name == "echo""#),
            Some(true)
        );
        assert_eq!(t(r#""admin" in jwt.groups"#), Some(true));
        assert_eq!(t(r#"!("root" in jwt.groups)"#), Some(true));
        assert_eq!(t(r#"mcp.tool.name.startsWith("ec") || false"#), Some(true));
        assert_eq!(t(r#"mcp.tool.name.endsWith("x")"#), Some(false));
        assert_eq!(t(r#"jwt.nested.key == "value""#), Some(true));
        assert_eq!(
            t(r#"jwt["nested"]["key"] == "value" && jwt.groups[1] == "admin""#),
            Some(true)
        );
        assert_eq!(t(r#"has(jwt.email)"#), Some(false));
        assert_eq!(
            t(r#"has(jwt.sub) && size(jwt.groups) == 2 && jwt.n >= 3 && jwt.n < 3.5"#),
            Some(true)
        );
        assert_eq!(t(r#"mcp.tool.target in ["demo", "other"]"#), Some(true));
        assert_eq!(t("true"), Some(true));
        // A missing field is an error, not false; `||` and `&&` absorb it when the other side
        // decides.
        assert_eq!(t(r#"jwt.email == "x""#), None);
        assert_eq!(
            t(r#"jwt.email == "x" || mcp.tool.name == "echo""#),
            Some(true)
        );
        assert_eq!(
            t(r#"jwt.email == "x" && mcp.tool.name == "add""#),
            Some(false)
        );
        // No token at all: every jwt reference fails.
        assert_eq!(check(r#"jwt.sub == "alice""#, tool.clone(), None), None);
    }

    #[test]
    fn load_time_errors_point_at_the_column() {
        let cases = [
            (r#"mcp.tool.name = "echo""#, 15),
            (r#"mcp.tool.name == "echo" &&"#, 27),
            (r#"request.path == "/""#, 1),
            (r#"mcp.tool.name.matches("e.*")"#, 15),
            (r#"mcp.tool.name == "echo"#, 18),
            (r#"(mcp.tool.name == "echo""#, 25),
            (r#"mcp.tool.name == "a" == true"#, 22),
            ("mcp.tool.name == @", 18),
        ];
        for (rule, col) in cases {
            let e = Rule::parse(rule).expect_err(rule);
            assert_eq!(e.column, col, "{rule}: {e}");
        }
        let deep = "!".repeat(200) + "true";
        assert!(Rule::parse(&deep).is_err());
        let nested = "(".repeat(200) + "true" + &")".repeat(200);
        assert!(Rule::parse(&nested).is_err());
    }

    #[test]
    fn rule_sets_deny_over_require_over_allow() {
        let p = |s: &str| Rule::parse(s).expect("rule");
        let set = RuleSet {
            allow: vec![p(r#"mcp.tool.name == "echo""#), p(r#"jwt.sub == "admin""#)],
            deny: vec![p(r#"mcp.tool.name == "rm""#)],
            require: vec![],
        };
        let v = |name: &str, sub: Option<&str>| {
            let mcp = json!({"tool": {"name": name, "target": "t"}});
            let jwt = sub.map(|s| json!({"sub": s}));
            set.permits(&Vars {
                mcp: Some(&mcp),
                jwt: jwt.as_ref(),
                api_key: None,
            })
        };
        assert!(v("echo", None));
        assert!(!v("add", None));
        assert!(v("add", Some("admin")));
        assert!(!v("rm", Some("admin")));
        let strict = RuleSet {
            require: vec![p(r#"jwt.sub == "admin""#)],
            ..RuleSet::default()
        };
        let mcp = json!({});
        assert!(
            !strict.permits(&Vars {
                mcp: Some(&mcp),
                jwt: None,
                api_key: None
            }),
            "an error fails a require"
        );
        assert!(RuleSet::default().permits(&Vars::default()));
    }
}
