//! Rule schedules: weekly windows in a fixed UTC offset.

/// A schedule, compiled to minutes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Offset from UTC, in minutes.
    offset_minutes: i64,
    /// (days bitmask with Monday = bit 0, 0 = every day; start minute; end minute, exclusive).
    windows: Vec<(u8, u16, u16)>,
}

impl Schedule {
    /// Compiles the API form; the schema has checked the formats, this checks the meaning.
    pub fn compile(s: &agentgate_crds::policy::Schedule) -> Result<Self, String> {
        let offset_minutes = if s.utc_offset == "Z" {
            0
        } else {
            let sign = if s.utc_offset.starts_with('-') { -1 } else { 1 };
            let hm =
                minutes(&s.utc_offset[1..]).ok_or_else(|| format!("invalid utcOffset {:?}", s.utc_offset))?;
            sign * i64::from(hm)
        };
        let mut windows = Vec::new();
        for (i, w) in s.windows.iter().enumerate() {
            let start =
                minutes(&w.start).ok_or_else(|| format!("windows[{i}].start: invalid time {:?}", w.start))?;
            let end = minutes(&w.end).ok_or_else(|| format!("windows[{i}].end: invalid time {:?}", w.end))?;
            if start >= end {
                return Err(format!("windows[{i}]: start must be before end"));
            }
            let days = w.days.iter().fold(0u8, |acc, d| acc | 1 << (*d as u8));
            windows.push((days, start, end));
        }
        Ok(Self {
            offset_minutes,
            windows,
        })
    }

    /// Whether Unix time `now` falls inside a window.
    pub fn in_force(&self, now: i64) -> bool {
        let local = now.div_euclid(60) + self.offset_minutes;
        let day = local.div_euclid(1440);
        let minute = local.rem_euclid(1440) as u16;
        // 1970-01-01 was a Thursday: Monday-based index 3.
        let weekday = (day + 3).rem_euclid(7) as u8;
        self.windows.iter().any(|(days, start, end)| {
            (*days == 0 || days & (1 << weekday) != 0) && (*start..*end).contains(&minute)
        })
    }
}

fn minutes(hhmm: &str) -> Option<u16> {
    let (h, m) = hhmm.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && (h < 24 || m == 0)).then_some(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(yaml: &str) -> Schedule {
        Schedule::compile(&serde_saphyr::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn weekday_business_hours_in_an_offset() {
        let s = schedule(
            "utcOffset: '+02:00'\nwindows:\n- days: [Mon, Tue, Wed, Thu, Fri]\n  start: '09:00'\n  end: '17:00'\n",
        );
        // 2026-11-24 is a Tuesday. 07:30 UTC = 09:30 local.
        let tue_0730_utc = 1_795_505_400;
        assert!(s.in_force(tue_0730_utc));
        assert!(!s.in_force(tue_0730_utc - 3600)); // 08:30 local
        assert!(!s.in_force(tue_0730_utc + 4 * 86400)); // Saturday
        let all_day = schedule("windows:\n- start: '00:00'\n  end: '24:00'\n");
        assert!(all_day.in_force(0) && all_day.in_force(tue_0730_utc));
    }
}
