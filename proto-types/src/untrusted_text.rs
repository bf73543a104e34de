//! Text a job printed, made fit to show a person: what a plan's code wrote can neither drive
//! the reader's terminal nor reorder what the reader sees, and is cut short only between
//! characters.

/// Unicode's bidirectional formatting characters, the "Trojan Source" set (CVE-2021-42574).
/// Each reorders or isolates what follows it on its line: `abc` `U+202E` `def` reads `abcfed`.
/// A plan's output may carry them in a value the pull request sets, to make a plan line read
/// as something it is not.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// How a bidirectional formatting character is shown instead: its code point, `<U+202E>`, as
/// GitHub's code view flags them. Seen, and of no effect.
pub fn bidi_marker(c: char) -> String {
    format!("<U+{:04X}>", u32::from(c))
}

/// `text` with each bidirectional formatting character replaced by its [`bidi_marker`]; all
/// else kept.
pub fn reveal_bidi(text: &str) -> String {
    if !text.chars().any(is_bidi_control) {
        return text.to_owned();
    }
    let mut shown = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_bidi_control(c) {
            shown.push_str(&bidi_marker(c));
        } else {
            shown.push(c);
        }
    }
    shown
}

/// `text` for a terminal: without control characters (terminal escapes among them would move
/// the cursor, recolour or hide text), and with bidirectional formatting characters revealed.
pub fn printable(text: &str) -> String {
    reveal_bidi(&text.chars().filter(|c| !c.is_control()).collect::<String>())
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary:
/// a byte slice that cuts a multi-byte character panics.
pub fn head(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The longest end of `text` of at most `max` bytes that starts on a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_tails_are_cut_on_character_boundaries() {
        assert_eq!(head("héllo", 2), "h", "not inside the two bytes of é");
        assert_eq!(head("héllo", 3), "hé");
        assert_eq!(head("abc", 10), "abc");
        assert_eq!(head("abc", 0), "");
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("héllo", 5), "éllo");
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abc", 0), "");
    }

    #[test]
    fn bidi_controls_are_shown_as_their_code_points_and_the_rest_is_kept() {
        let text = "plan: \u{202E}yortsed\u{202C} \u{2067}x\u{2069} \u{200F}\u{061C} é ✓";
        assert_eq!(
            reveal_bidi(text),
            "plan: <U+202E>yortsed<U+202C> <U+2067>x<U+2069> <U+200F><U+061C> é ✓"
        );
        assert_eq!(reveal_bidi("plain text"), "plain text");
    }

    #[test]
    fn every_trojan_source_character_counts_and_its_neighbours_do_not() {
        let listed = [
            0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068,
            0x2069,
        ];
        for code in 0x0600..=0x2100 {
            let c = char::from_u32(code).unwrap();
            assert_eq!(is_bidi_control(c), listed.contains(&code), "U+{code:04X}");
        }
    }

    #[test]
    fn printable_text_loses_terminal_escapes_and_shows_bidi_controls() {
        assert_eq!(
            printable("\u{1b}[2J\u{1b}]0;title\u{7}ok\r\n\t\u{202E}x"),
            "[2J]0;titleok<U+202E>x"
        );
    }
}
