//! How the command prints: tables whose columns fit their contents, colours only on a
//! terminal (never with `NO_COLOR`), times in words.

use sheepdog::Status;
use sheepdog::control::protocol::{Exit, Run, Service, Stats};
use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where output goes, and what it may use there.
pub struct Style {
    pub colour: bool,
    /// The terminal's width, when stdout is one.
    pub width: Option<usize>,
}

impl Style {
    pub fn detect() -> Style {
        let stdout = std::io::stdout();
        let tty = stdout.is_terminal();
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let width = tty
            .then(|| rustix::termios::tcgetwinsize(&stdout).ok())
            .flatten()
            .map(|w| w.ws_col as usize)
            .filter(|&w| w > 0);
        Style {
            colour: tty && !no_colour,
            width,
        }
    }

    pub fn paint(&self, text: &str, code: &str) -> String {
        if self.colour && !code.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn status(&self, status: Status) -> String {
        let code = match status {
            Status::Online => "32",
            Status::Starting | Status::Stopping => "36",
            Status::Backoff => "33",
            Status::Errored => "31;1",
            _ => "2",
        };
        self.paint(status.as_str(), code)
    }
}

/// A table: a header and rows of cells, each column as wide as its widest cell; the last
/// column is cut to the terminal's width rather than wrapped.
pub struct Table {
    header: Vec<&'static str>,
    /// Columns aligned right (numbers).
    right: Vec<bool>,
    rows: Vec<Vec<(String, &'static str)>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, bool)]) -> Table {
        Table {
            header: columns.iter().map(|c| c.0).collect(),
            right: columns.iter().map(|c| c.1).collect(),
            rows: Vec::new(),
        }
    }

    /// A row: each cell with its colour code ("" for none).
    pub fn row(&mut self, cells: Vec<(String, &'static str)>) {
        self.rows.push(cells);
    }

    pub fn render(&self, style: &Style) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (cell, _)) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<(String, &str)> =
            self.header.iter().map(|h| (h.to_string(), "1")).collect();
        for row in std::iter::once(&header).chain(self.rows.iter()) {
            let mut used = 0;
            let mut line = String::new();
            for (i, (cell, code)) in row.iter().enumerate().take(cols) {
                let last = i + 1 == cols;
                let mut text = cell.clone();
                if last && let Some(width) = style.width {
                    let room = width.saturating_sub(used).max(8);
                    if text.chars().count() > room {
                        text = text.chars().take(room - 1).collect::<String>() + "…";
                    }
                }
                let pad = widths[i].saturating_sub(text.chars().count());
                let padded = if last && !self.right[i] {
                    text.clone()
                } else if self.right[i] {
                    format!("{}{text}", " ".repeat(pad))
                } else {
                    format!("{text}{}", " ".repeat(pad))
                };
                used += widths[i] + 2;
                line += &style.paint(&padded, code);
                if !last {
                    line += "  ";
                }
            }
            out += line.trim_end();
            out.push('\n');
        }
        out
    }
}

pub fn since(ms: u64) -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH + Duration::from_millis(ms))
        .unwrap_or_default()
}

/// `45s`, `3m12s`, `5h02m`, `3d04h`.
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

pub fn bytes(n: u64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    match n {
        n if n < 1 << 20 => format!("{:.0}K", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1}M", n as f64 / MIB),
        n => format!("{:.2}G", n as f64 / MIB / 1024.0),
    }
}

/// An RFC 3339 UTC time with seconds: `2026-11-27T12:00:03Z`.
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Milliseconds since the epoch of an RFC 3339 UTC time (`2026-11-27T12:00:03Z`, with
/// optional fractional seconds), the inverse of [`timestamp`].
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let t = text.strip_suffix('Z').or_else(|| text.strip_suffix('z'))?;
    let (date, time) = t.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut h = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let millis: i64 = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        digits.parse().ok()?
    };
    // Days since the epoch from a civil date (the inverse of the above).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 86400 + hh * 3600 + mm * 60 + ss) * 1000) + millis;
    u64::try_from(ms).ok()
}

pub fn exit(e: &Exit) -> String {
    format!("{e}, {} ago", span(since(e.at_ms)))
}

/// The `ls` table, pm2's columns.
pub fn services(list: &[Service], stats: &[Stats], style: &Style) -> String {
    let mut t = Table::new(&[
        ("id", true),
        ("name", false),
        ("status", false),
        ("pid", true),
        ("uptime", true),
        ("restarts", true),
        ("cpu", true),
        ("memory", true),
        ("last exit", false),
    ]);
    for s in list {
        let st = stats
            .iter()
            .find(|x| x.name == s.name)
            .filter(|_| s.pid.is_some());
        let status_code = match s.status {
            Status::Online => "32",
            Status::Starting | Status::Stopping => "36",
            Status::Backoff => "33",
            Status::Errored => "31;1",
            _ => "2",
        };
        let mut status = s.status.as_str().to_string();
        if let Some(ms) = s.next_start_in_ms {
            status += &format!(" ({})", span(Duration::from_millis(ms)));
        }
        t.row(vec![
            (s.id.to_string(), ""),
            (s.name.clone(), "1"),
            (status, status_code),
            (s.pid.map_or("-".into(), |p| p.to_string()), ""),
            (s.started_at_ms.map_or("-".into(), |t| span(since(t))), ""),
            (
                s.restarts.to_string(),
                if s.restarts > 0 { "33" } else { "" },
            ),
            (
                st.map_or("-".into(), |x| format!("{:.1}%", x.cpu_percent)),
                "",
            ),
            (st.map_or("-".into(), |x| bytes(x.rss_bytes)), ""),
            (s.last_exit.as_ref().map_or("-".into(), exit), "2"),
        ]);
    }
    t.render(style)
}

pub fn history(runs: &[Run], style: &Style) -> String {
    let mut t = Table::new(&[
        ("run", true),
        ("pid", true),
        ("started", false),
        ("uptime", true),
        ("exit", false),
        ("cause", false),
        ("decision", false),
    ]);
    for r in runs {
        let uptime = r
            .ended_at_ms
            .map(|end| Duration::from_millis(end.saturating_sub(r.started_at_ms)))
            .unwrap_or_else(|| since(r.started_at_ms));
        let exit = match (r.code, r.signal, r.ended_at_ms) {
            (_, _, None) => "running".to_string(),
            (Some(c), _, _) => format!("code {c}"),
            (None, Some(s), _) => format!("signal {s}"),
            (None, None, _) => "-".to_string(),
        };
        let cause = r.cause.clone().unwrap_or_else(|| "-".into())
            + &r.reason
                .as_ref()
                .map_or(String::new(), |w| format!(": {w}"));
        t.row(vec![
            (r.id.to_string(), ""),
            (r.pid.to_string(), ""),
            (timestamp(r.started_at_ms), ""),
            (format!("{:.3}s", uptime.as_secs_f64()), ""),
            (exit, ""),
            (cause, ""),
            (r.decision.clone().unwrap_or_else(|| "-".into()), "2"),
        ]);
    }
    t.render(style)
}

pub fn stats(list: &[Stats], style: &Style) -> String {
    let mut t = Table::new(&[
        ("name", false),
        ("processes", true),
        ("threads", true),
        ("cpu", true),
        ("memory", true),
    ]);
    for s in list {
        t.row(vec![
            (s.name.clone(), "1"),
            (s.processes.to_string(), ""),
            (s.threads.to_string(), ""),
            (format!("{:.1}%", s.cpu_percent), ""),
            (bytes(s.rss_bytes), ""),
        ]);
    }
    t.render(style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for ms in [0, 1_798_372_803_000, 951_782_400_000] {
            assert_eq!(parse_timestamp(&timestamp(ms)), Some(ms));
        }
        assert_eq!(timestamp(1_798_372_803_000), "2026-12-27T12:00:03Z");
        assert_eq!(
            parse_timestamp("2026-12-27T12:00:03.250Z"),
            Some(1_798_372_803_250)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn columns_fit_the_longest_cell_and_the_last_is_cut_to_the_terminal() {
        let mut t = Table::new(&[("name", false), ("n", true), ("note", false)]);
        t.row(vec![
            ("a-very-long-service-name".into(), ""),
            ("7".into(), ""),
            ("x".repeat(100), ""),
        ]);
        t.row(vec![
            ("b".into(), ""),
            ("12345".into(), ""),
            ("short".into(), ""),
        ]);
        let plain = Style {
            colour: false,
            width: Some(60),
        };
        let text = t.render(&plain);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "name                          n  note");
        assert!(lines[1].starts_with("a-very-long-service-name      7  xxx"));
        assert!(lines.iter().all(|l| l.chars().count() <= 60), "{text}");
        assert!(lines[1].ends_with('…'));
        assert_eq!(lines[2], "b                         12345  short");
        assert!(!text.contains('\x1b'), "no colour without a terminal");
    }
}
