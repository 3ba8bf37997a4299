//! Reading every turn of a scope back from a store, paged out or hot, to count and order them.

#![allow(dead_code)]

/// Every turn text of a scope in turn order, whitespace removed: the pages' retained text split
/// by their turn pieces (a continued piece joins the turn before it), then the hot turns.
pub fn all_turn_texts(lethe: &lethe::Lethe, scope: &str) -> Vec<String> {
    let scope = lethe::Scope::session(scope);
    let store = lethe.store();
    let mut pages = store.pages(Some(&scope)).unwrap().pages;
    pages.sort_by_key(|p| p.turns.start);
    let squeeze = |t: &str| t.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let mut texts: Vec<String> = Vec::new();
    for page in &pages {
        let text = page
            .text
            .as_deref()
            .expect("pages keep their text by default");
        let mut at = 0usize;
        for piece in &page.layout.pieces {
            let words = squeeze(&text[at..at + piece.len as usize]);
            at += piece.len as usize;
            match texts.last_mut() {
                Some(last) if piece.continued => last.push_str(&words),
                _ => texts.push(words),
            }
        }
    }
    texts.extend(
        store
            .hot_turns(&scope)
            .unwrap()
            .iter()
            .map(|t| squeeze(&t.text)),
    );
    texts
}

/// The sequence number in a turn text (whitespace removed) that `client` sent, if it did.
pub fn seq_of(text: &str, client: usize) -> Option<usize> {
    let rest = text.strip_prefix(&format!("client{client}message"))?;
    rest.split(':').next()?.parse().ok()
}
