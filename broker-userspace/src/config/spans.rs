//! Line numbers of keys: serde_yaml forgets positions once a value is deserialised, so the
//! validator's "tunnels[2].link_prefix" is located by walking the parser's marked events.
use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// Maps key paths (`tunnels[2].link_prefix`, `interfaces[0]`) to 1-based lines.
pub struct SpanIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

/// The deepest nesting a configuration needs is four or five levels; documents deeper
/// than this are refused before anything else reads them (path bookkeeping is quadratic
/// in the depth, and a 40 000-level document took 20 s).
pub const MAX_DEPTH: usize = 32;

/// The line at which `text` nests deeper than [`MAX_DEPTH`], if it does. Linear: flow
/// collections (`[[[...`) are counted on the text first, because the YAML scanner itself
/// is quadratic in their depth; block nesting then on the parser's events.
pub fn too_deep(text: &str) -> Option<usize> {
    flow_too_deep(text).or_else(|| block_too_deep(text))
}

fn flow_too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut prev = ' ';
        for c in line.chars() {
            match quote {
                Some('"') if escaped => escaped = false,
                Some('"') if c == '\\' => escaped = true,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if prev.is_whitespace() => break,
                    '"' | '\'' => quote = Some(c),
                    '[' | '{' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Some(i + 1);
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    None
}

fn block_too_deep(text: &str) -> Option<usize> {
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    while let Ok((event, mark)) = parser.next_token() {
        match event {
            Event::StreamEnd => break,
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(mark.line());
                }
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

impl SpanIndex {
    /// Indexes `text`; an unparsable document yields an empty index (the syntax error is
    /// reported by serde_yaml before this is used).
    pub fn new(text: &str) -> Self {
        let mut lines = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Ok((event, mark)) = parser.next_token() {
            let line = mark.line();
            match event {
                Event::StreamEnd => break,
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { path, key }) = stack.last_mut() {
                        if key.is_none() {
                            let p = join(path, &value);
                            lines.entry(p).or_insert(line);
                            *key = Some(value);
                            continue;
                        }
                    }
                    record_item(&mut stack, &mut lines, line);
                    advance(&mut stack);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = record_item(&mut stack, &mut lines, line)
                        .or_else(|| current_path(&stack))
                        .unwrap_or_default();
                    stack.push(match event {
                        Event::MappingStart(..) => Frame::Map { path, key: None },
                        _ => Frame::Seq { path, index: 0 },
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    advance(&mut stack);
                }
                _ => {}
            }
        }
        Self { lines }
    }

    /// The line of `path`, or of its nearest indexed parent.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            p = &p[..p.rfind(['.', '['])?];
        }
    }
}

/// Records a sequence item's position; returns its path when the parent is a sequence.
fn record_item(
    stack: &mut [Frame],
    lines: &mut HashMap<String, usize>,
    line: usize,
) -> Option<String> {
    match stack.last() {
        Some(Frame::Seq { path, index }) => {
            let p = format!("{path}[{index}]");
            lines.entry(p.clone()).or_insert(line);
            Some(p)
        }
        _ => None,
    }
}

/// The path of the value about to start in the top frame (a map's current key).
fn current_path(stack: &[Frame]) -> Option<String> {
    match stack.last() {
        Some(Frame::Map {
            path,
            key: Some(key),
        }) => Some(join(path, key)),
        _ => None,
    }
}

/// A value finished: a map expects its next key, a sequence its next item.
fn advance(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key, .. }) => *key = None,
        Some(Frame::Seq { index, .. }) => *index += 1,
        None => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}
