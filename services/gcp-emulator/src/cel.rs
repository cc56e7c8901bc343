//! The subset of CEL that workload identity attribute conditions use in practice:
//! `assertion.a.b` and `google.subject` operands, string and boolean literals, `==`, `!=`,
//! `.startsWith('x')`, `&&`, `||`, `!` and parentheses.

use serde_json::Value;

/// A parsed attribute condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A string or boolean literal.
    Literal(Value),
    /// A dotted path such as `assertion.repository` or `google.subject`.
    Path(Vec<String>),
    /// `left == right`.
    Eq(Box<Expr>, Box<Expr>),
    /// `left != right`.
    Ne(Box<Expr>, Box<Expr>),
    /// `value.startsWith(prefix)`.
    StartsWith(Box<Expr>, Box<Expr>),
    /// `left && right`.
    And(Box<Expr>, Box<Expr>),
    /// `left || right`.
    Or(Box<Expr>, Box<Expr>),
    /// `!value`.
    Not(Box<Expr>),
}

/// A condition that could not be parsed, with the byte offset of the problem.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{message} at offset {offset}")]
pub struct ParseError {
    message: String,
    offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Dot,
    LParen,
    RParen,
    EqEq,
    NotEq,
    AndAnd,
    OrOr,
    Bang,
}

fn tokenize(input: &str) -> Result<Vec<(usize, Token)>, ParseError> {
    let bytes = input.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let err = |message: &str, offset| ParseError {
        message: message.to_owned(),
        offset,
    };
    while i < bytes.len() {
        let c = bytes[i];
        let two = input.get(i..i + 2).unwrap_or_default();
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'.' => {
                tokens.push((i, Token::Dot));
                i += 1;
            }
            b'(' => {
                tokens.push((i, Token::LParen));
                i += 1;
            }
            b')' => {
                tokens.push((i, Token::RParen));
                i += 1;
            }
            _ if two == "==" => {
                tokens.push((i, Token::EqEq));
                i += 2;
            }
            _ if two == "!=" => {
                tokens.push((i, Token::NotEq));
                i += 2;
            }
            _ if two == "&&" => {
                tokens.push((i, Token::AndAnd));
                i += 2;
            }
            _ if two == "||" => {
                tokens.push((i, Token::OrOr));
                i += 2;
            }
            b'!' => {
                tokens.push((i, Token::Bang));
                i += 1;
            }
            b'\'' | b'"' => {
                let start = i;
                i += 1;
                let mut text = String::new();
                loop {
                    let Some(&b) = bytes.get(i) else {
                        return Err(err("unterminated string", start));
                    };
                    if b == c {
                        i += 1;
                        break;
                    }
                    if b == b'\\' {
                        let Some(&escaped) = bytes.get(i + 1) else {
                            return Err(err("unterminated string", start));
                        };
                        text.push(char::from(escaped));
                        i += 2;
                        continue;
                    }
                    let ch = input[i..].chars().next().unwrap_or_default();
                    text.push(ch);
                    i += ch.len_utf8();
                }
                tokens.push((start, Token::Str(text)));
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                tokens.push((start, Token::Ident(input[start..i].to_owned())));
            }
            _ => return Err(err("unexpected character", i)),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn error(&self, message: &str) -> ParseError {
        ParseError {
            message: message.to_owned(),
            offset: self.offset(),
        }
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.eat(&Token::OrOr) {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while self.eat(&Token::AndAnd) {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat(&Token::Bang) {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        let left = self.postfix()?;
        if self.eat(&Token::EqEq) {
            return Ok(Expr::Eq(Box::new(left), Box::new(self.postfix()?)));
        }
        if self.eat(&Token::NotEq) {
            return Ok(Expr::Ne(Box::new(left), Box::new(self.postfix()?)));
        }
        Ok(left)
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.primary()?;
        while self.eat(&Token::Dot) {
            match self.tokens.get(self.pos).map(|(_, t)| t.clone()) {
                Some(Token::Ident(name)) if name == "startsWith" => {
                    self.pos += 1;
                    if !self.eat(&Token::LParen) {
                        return Err(self.error("expected ( after startsWith"));
                    }
                    let prefix = self.or()?;
                    if !self.eat(&Token::RParen) {
                        return Err(self.error("expected )"));
                    }
                    expr = Expr::StartsWith(Box::new(expr), Box::new(prefix));
                }
                Some(Token::Ident(name)) => {
                    self.pos += 1;
                    match &mut expr {
                        Expr::Path(path) => path.push(name),
                        _ => return Err(self.error("field access on a non-path")),
                    }
                }
                _ => return Err(self.error("expected a name after .")),
            }
        }
        Ok(expr)
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        match self.tokens.get(self.pos).map(|(_, t)| t.clone()) {
            Some(Token::LParen) => {
                self.pos += 1;
                let inner = self.or()?;
                if !self.eat(&Token::RParen) {
                    return Err(self.error("expected )"));
                }
                Ok(inner)
            }
            Some(Token::Str(text)) => {
                self.pos += 1;
                Ok(Expr::Literal(Value::String(text)))
            }
            Some(Token::Ident(name)) if name == "true" || name == "false" => {
                self.pos += 1;
                Ok(Expr::Literal(Value::Bool(name == "true")))
            }
            Some(Token::Ident(name))
                if name == "assertion" || name == "google" || name == "attribute" =>
            {
                self.pos += 1;
                Ok(Expr::Path(vec![name]))
            }
            Some(Token::Ident(name)) => Err(self.error(&format!("unknown name {name:?}"))),
            _ => Err(self.error("expected an operand")),
        }
    }
}

impl Expr {
    /// Parses a condition.
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        let tokens = tokenize(input)?;
        let mut parser = Parser {
            tokens,
            pos: 0,
            end: input.len(),
        };
        let expr = parser.or()?;
        if parser.pos != parser.tokens.len() {
            return Err(parser.error("unexpected trailing input"));
        }
        Ok(expr)
    }

    /// Evaluates the condition; `assertion` holds the subject token's claims (or, for AWS, the
    /// caller identity), `subject` is `google.subject`. Anything not a boolean is false.
    pub fn evaluate(&self, assertion: &Value, subject: &str) -> bool {
        self.value(assertion, subject) == Value::Bool(true)
    }

    fn value(&self, assertion: &Value, subject: &str) -> Value {
        match self {
            Expr::Literal(v) => v.clone(),
            Expr::Path(path) => match path.first().map(String::as_str) {
                Some("assertion") => path[1..]
                    .iter()
                    .try_fold(assertion, |v, key| v.get(key))
                    .cloned()
                    .unwrap_or(Value::Null),
                Some("google") if path.len() == 2 && path[1] == "subject" => {
                    Value::String(subject.to_owned())
                }
                Some("attribute") if path.len() == 2 && path[1] == "subject" => {
                    Value::String(subject.to_owned())
                }
                _ => Value::Null,
            },
            Expr::Eq(a, b) => {
                Value::Bool(a.value(assertion, subject) == b.value(assertion, subject))
            }
            Expr::Ne(a, b) => {
                Value::Bool(a.value(assertion, subject) != b.value(assertion, subject))
            }
            Expr::StartsWith(a, b) => {
                match (a.value(assertion, subject), b.value(assertion, subject)) {
                    (Value::String(s), Value::String(p)) => Value::Bool(s.starts_with(&p)),
                    _ => Value::Bool(false),
                }
            }
            Expr::And(a, b) => {
                Value::Bool(a.evaluate(assertion, subject) && b.evaluate(assertion, subject))
            }
            Expr::Or(a, b) => {
                Value::Bool(a.evaluate(assertion, subject) || b.evaluate(assertion, subject))
            }
            Expr::Not(a) => Value::Bool(!a.evaluate(assertion, subject)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_the_supported_subset() {
        let claims = json!({"sub": "repo:org/app:ref:main", "repository": "org/app", "ctx": {"env": "prod"}, "admin": true});
        let cases = [
            ("assertion.repository == 'org/app'", true),
            ("assertion.repository != 'org/app'", false),
            (
                "assertion.ctx.env == \"prod\" && google.subject.startsWith('repo:org/')",
                true,
            ),
            ("assertion.missing == 'x' || assertion.admin == true", true),
            ("!(assertion.repository == 'org/app')", false),
            ("assertion.sub.startsWith('repo:other/')", false),
            ("assertion.missing.startsWith('x')", false),
        ];
        for (text, expected) in cases {
            let expr = Expr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                expr.evaluate(&claims, "repo:org/app:ref:main"),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        for text in [
            "",
            "assertion.x ==",
            "foo == 'x'",
            "assertion.x == 'unterminated",
            "assertion.x in ['a']",
            "(assertion.x == 'a'",
        ] {
            assert!(Expr::parse(text).is_err(), "{text}");
        }
    }
}
