//! The narrow SQL interface the store's logic is written against, so that one logic serves
//! both engines (docs/MULTI-POP.md, "One logic, two engines"). Each engine supplies:
//! - statements run with [`Value`] parameters;
//! - rows read column by column.
//!
//! Statements are written once, in the subset SQLite and PostgreSQL both accept, with
//! numbered (`?1`) or positional (`?`) parameters. An engine that spells them otherwise
//! rewrites them ([`numbered`]).
use super::{Result, StoreError};

/// A parameter or a column's value. Integers are 64-bit signed on both engines (SQLite's
/// INTEGER, PostgreSQL's BIGINT); addresses and prefixes are text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(u8, u16, u32, i64);

impl From<u64> for Value {
    /// Times, counters and ids, all far below 2^63; a larger value would be a bug, kept
    /// visible as the largest one rather than wrapped to a negative.
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Parameters of a statement: `params![a, b]` is `&[Value::from(a), Value::from(b)]`.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($p)),*][..]
    };
}
pub(crate) use params;

/// One row of a result, read by column index.
pub trait Row {
    fn value(&self, i: usize) -> Result<Value>;
}

impl dyn Row + '_ {
    /// Column `i` as `T` ([`Column`]).
    pub fn get<T: Column>(&self, i: usize) -> Result<T> {
        T::from_value(self.value(i)?, i)
    }
}

/// What a column's value can be read as.
pub trait Column: Sized {
    fn from_value(v: Value, i: usize) -> Result<Self>;
}

fn wrong(v: &Value, i: usize, what: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!("column {i} holds {v:?} where {what} was expected"),
    }
}

macro_rules! column_int {
    ($($t:ty),*) => {$(
        impl Column for $t {
            fn from_value(v: Value, i: usize) -> Result<Self> {
                match v {
                    Value::Int(n) => <$t>::try_from(n).map_err(|_| wrong(&v, i, stringify!($t))),
                    _ => Err(wrong(&v, i, stringify!($t))),
                }
            }
        }
    )*};
}
column_int!(u8, u16, u32, u64, i64);

impl Column for String {
    fn from_value(v: Value, i: usize) -> Result<Self> {
        match v {
            Value::Text(s) => Ok(s),
            _ => Err(wrong(&v, i, "text")),
        }
    }
}

impl<T: Column> Column for Option<T> {
    fn from_value(v: Value, i: usize) -> Result<Self> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v, i).map(Some),
        }
    }
}

/// A connection or transaction of an engine.
pub trait Sql {
    /// Runs a statement; the number of rows it changed.
    fn exec(&self, sql: &str, params: &[Value]) -> Result<usize>;

    /// Runs a query, calling `each` for every row in order.
    fn each_row(
        &self,
        sql: &str,
        params: &[Value],
        each: &mut dyn FnMut(&dyn Row) -> Result<()>,
    ) -> Result<()>;
}

impl dyn Sql + '_ {
    /// Every row of a query, mapped by `f`.
    pub fn rows<T>(
        &self,
        sql: &str,
        params: &[Value],
        mut f: impl FnMut(&dyn Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.each_row(sql, params, &mut |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row of a query, mapped by `f`; `None` when there is none.
    pub fn first<T>(
        &self,
        sql: &str,
        params: &[Value],
        f: impl FnOnce(&dyn Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.each_row(sql, params, &mut |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// `sql` with its parameters numbered `$1`, `$2`, … as PostgreSQL wants them, and for each
/// of those the index of the parameter it takes from the list the statement was written
/// for. `?N` is parameter N and each bare `?` the one after the highest so far; parameters
/// the statement does not use are left out, since PostgreSQL refuses a parameter whose
/// type nothing in the statement says. Quoted text and identifiers are left as they are.
pub fn numbered(sql: &str) -> (String, Vec<usize>) {
    enum Piece {
        Text(String),
        Param(usize),
    }
    let mut pieces = vec![Piece::Text(String::new())];
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut next = 1usize;
    while let Some(c) = chars.next() {
        if quote.is_none() && c == '?' {
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            let n = digits.parse::<usize>().unwrap_or(next);
            next = next.max(n + 1);
            pieces.push(Piece::Param(n));
            pieces.push(Piece::Text(String::new()));
            continue;
        }
        match quote {
            Some(q) if c == q => quote = None,
            None if c == '\'' || c == '"' => quote = Some(c),
            _ => {}
        }
        if let Some(Piece::Text(t)) = pieces.last_mut() {
            t.push(c);
        }
    }
    let mut used: Vec<usize> = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Param(n) => Some(*n),
            Piece::Text(_) => None,
        })
        .collect();
    used.sort_unstable();
    used.dedup();
    let mut out = String::with_capacity(sql.len() + 8);
    for p in pieces {
        match p {
            Piece::Text(t) => out.push_str(&t),
            Piece::Param(n) => {
                let k = used.binary_search(&n).expect("collected above") + 1;
                out.push('$');
                out.push_str(&k.to_string());
            }
        }
    }
    (out, used.into_iter().map(|n| n - 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_for_postgresql() {
        let n = |sql: &str| numbered(sql);
        assert_eq!(
            n("SELECT id FROM t WHERE a = ?1 AND b = ?2 OR c = ?1"),
            (
                "SELECT id FROM t WHERE a = $1 AND b = $2 OR c = $1".into(),
                vec![0, 1]
            )
        );
        assert_eq!(
            n("SELECT x FROM t WHERE id > ? AND kind = ? LIMIT ?"),
            (
                "SELECT x FROM t WHERE id > $1 AND kind = $2 LIMIT $3".into(),
                vec![0, 1, 2]
            )
        );
        // Unused parameters are left out; the rest keep their order.
        assert_eq!(
            n("SELECT id FROM t WHERE v6 = ?3 AND (?4 IS NULL OR id <> ?4)"),
            (
                "SELECT id FROM t WHERE v6 = $1 AND ($2 IS NULL OR id <> $2)".into(),
                vec![2, 3]
            )
        );
        // Quoted question marks are text, not parameters.
        assert_eq!(
            n("SELECT '?', \"a?\" FROM t WHERE x = ?10 AND y = ?"),
            (
                "SELECT '?', \"a?\" FROM t WHERE x = $1 AND y = $2".into(),
                vec![9, 10]
            )
        );
        assert_eq!(n("SELECT 1"), ("SELECT 1".into(), vec![]));
    }

    #[test]
    fn values_convert_both_ways_and_refuse_what_does_not_fit() {
        assert_eq!(Value::from(7u32), Value::Int(7));
        assert_eq!(Value::from(u64::MAX), Value::Int(i64::MAX));
        assert_eq!(Value::from(None::<u16>), Value::Null);
        assert_eq!(Value::from(Some("a")), Value::Text("a".into()));
        assert_eq!(u32::from_value(Value::Int(7), 0).unwrap(), 7);
        assert!(u32::from_value(Value::Int(-1), 0).is_err());
        assert!(u16::from_value(Value::Int(70_000), 0).is_err());
        assert!(String::from_value(Value::Int(1), 3)
            .unwrap_err()
            .to_string()
            .contains("column 3"));
        assert_eq!(Option::<u32>::from_value(Value::Null, 0).unwrap(), None);
        assert_eq!(
            Option::<String>::from_value(Value::Text("x".into()), 0).unwrap(),
            Some("x".into())
        );
    }
}
