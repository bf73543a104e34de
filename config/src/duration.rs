//! Durations as the policy writes them: `90s`, `5m`, `1h30m`.

/// `90s`, `45m`, `4h`, `1h30m`, `2h15m30s`: a positive duration with a unit on every number.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "{text:?} is not a duration like 90s, 45m, 4h or 1h30m"
                ));
            }
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 90s, 45m, 4h or 1h30m"))?;
        total = total.saturating_add(value.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!("{text:?} needs a unit: 90s, 45m, 4h or 1h30m"));
    }
    if total == 0 {
        return Err(format!("{text:?} is not a positive duration"));
    }
    Ok(std::time::Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use crate::testing::{VALID, error_of};

    #[test]
    fn durations_need_a_unit_on_every_number() {
        let secs = |text| parse_duration(text).map(|d| d.as_secs());
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("45m"), Ok(2700));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs(" 2h15m30s "), Ok(8130));
        assert!(secs("90").unwrap_err().contains("needs a unit"));
        assert!(secs("4 hours").is_err());
        assert!(secs("0s").unwrap_err().contains("not a positive duration"));
        let text = format!("{VALID}\njob_timeout = \"forever\"\n");
        assert!(
            error_of(&text).contains("`accounts[0].job_timeout`: \"forever\" is not a duration")
        );
    }
}
