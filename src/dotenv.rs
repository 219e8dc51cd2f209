//! The dotenv format, for a Procfile's `.env` and a service's `env_file`: `KEY=value` lines,
//! `#` comments, an optional `export `, single or double quotes (`\n` and `\"` inside
//! double quotes), and ` #` comments after an unquoted value, as foreman and honcho read it.
//! Pure; imports nothing of the crate.

use std::collections::BTreeMap;

/// Where and why a line-based file could not be read: 1-based line and column, and a
/// lowercase phrase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) message: String,
}

/// The text of a line-based file, or the first line (and column) whose bytes are not UTF-8.
pub(crate) fn utf8_text(bytes: &[u8]) -> Result<String, Problem> {
    match String::from_utf8(bytes.to_vec()) {
        Ok(text) => Ok(text),
        Err(e) => {
            let valid = &bytes[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            let start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&valid[start..]).chars().count() + 1;
            Err(Problem {
                line,
                column,
                message: "the line is not valid UTF-8".to_string(),
            })
        }
    }
}

/// The variables of a dotenv text, the last of a key winning.
pub(crate) fn parse(text: &str) -> Result<BTreeMap<String, String>, Problem> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let problem = |message: String| Problem {
            line: i + 1,
            column: 1,
            message,
        };
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(problem("expected KEY=value".to_string()));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == '\0') {
            return Err(problem(format!("'{key}' is not a variable name")));
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            let inner = &value[1..value.len() - 1];
            if value.starts_with('"') {
                inner.replace("\\n", "\n").replace("\\\"", "\"")
            } else {
                inner.to_string()
            }
        } else {
            value
                .split(" #")
                .next()
                .unwrap_or("")
                .trim_end()
                .to_string()
        };
        if value.contains('\0') {
            return Err(problem(format!("the value of '{key}' contains a NUL byte")));
        }
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_values_quotes_and_comments() {
        let env = parse(
            "# comment\nexport A=1\nB=\"two words\"\nC='x # y'\nD=plain # trailing\nE=\"a\\nb\"\n",
        )
        .unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "x # y");
        assert_eq!(env["D"], "plain");
        assert_eq!(env["E"], "a\nb");
        let err = parse("A=1\n=1\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 1));
        assert!(
            parse("no equals sign\n")
                .unwrap_err()
                .message
                .contains("KEY=value")
        );
        let err = utf8_text(b"A=1\nB=caf\xe9\n").unwrap_err();
        assert_eq!((err.line, err.column), (2, 6));
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in ".{0,200}") {
            let _ = parse(&text);
        }
    }
}
