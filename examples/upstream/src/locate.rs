//! Finds the line and column of a field in a YAML (or JSON) text by its path, e.g.
//! `groups[1].profile.effects[0].at_s`, so validation errors can name the place: serde hands
//! no spans to the types it builds.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A parsed node: its position and, for collections, its children.
enum Node {
    Leaf,
    /// Entries with the key's mark.
    Map(Vec<(String, Marker, Node)>),
    /// Items with their own mark.
    Seq(Vec<(Marker, Node)>),
}

/// One step of a field path.
#[derive(Debug, PartialEq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Splits `a.b[2].c` into steps; `None` for a malformed path.
fn steps(field: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            out.push(Step::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(out)
}

/// The 1-based line and column of `field` in `text`: of its key for a mapping entry, of the
/// item for a sequence element. When the path goes further than the text (a missing field),
/// the deepest part that exists is named; `None` when not even the first step exists or the
/// text does not parse.
pub fn locate(text: &str, field: &str) -> Option<(usize, usize)> {
    let steps = steps(field)?;
    let mut builder = Builder { stack: Vec::new() };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).ok()?;
    let root = builder.stack.pop().map(|f| f.node)?;
    let mut node = &root;
    let mut found = None;
    for step in steps {
        let next = match (step, node) {
            (Step::Key(k), Node::Map(entries)) => entries
                .iter()
                .find(|(key, ..)| key == k)
                .map(|(_, m, n)| (m, n)),
            (Step::Index(i), Node::Seq(items)) => items.get(i).map(|(m, n)| (m, n)),
            _ => None,
        };
        match next {
            Some((mark, n)) => {
                found = Some((mark.line(), mark.col() + 1));
                node = n;
            }
            None => break,
        }
    }
    found
}

struct Frame {
    node: Node,
    mark: Marker,
    /// For a mapping: the key read, waiting for its value.
    key: Option<(String, Marker)>,
}

struct Builder {
    stack: Vec<Frame>,
}

impl Builder {
    fn push_value(&mut self, node: Node, mark: Marker) {
        match self.stack.last_mut() {
            Some(Frame {
                node: Node::Map(entries),
                key,
                ..
            }) => {
                if let Some((k, km)) = key.take() {
                    entries.push((k, km, node));
                }
            }
            Some(Frame {
                node: Node::Seq(items),
                ..
            }) => {
                // A mapping item is named by its first key, where a reader looks.
                let mark = match &node {
                    Node::Map(entries) => entries.first().map_or(mark, |(_, m, _)| *m),
                    _ => mark,
                };
                items.push((mark, node))
            }
            // The document's root.
            _ => self.stack.push(Frame {
                node,
                mark,
                key: None,
            }),
        }
    }

    fn expects_key(&self) -> bool {
        matches!(
            self.stack.last(),
            Some(Frame {
                node: Node::Map(_),
                key: None,
                ..
            })
        )
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(s, ..) => {
                if self.expects_key() {
                    if let Some(f) = self.stack.last_mut() {
                        f.key = Some((s, mark));
                    }
                } else {
                    self.push_value(Node::Leaf, mark);
                }
            }
            Event::Alias(..) => self.push_value(Node::Leaf, mark),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a key cannot be named by a path: keep it as a leaf key.
                if self.expects_key()
                    && let Some(f) = self.stack.last_mut()
                {
                    f.key = Some((String::new(), mark));
                }
                let node = if matches!(ev, Event::MappingStart(..)) {
                    Node::Map(Vec::new())
                } else {
                    Node::Seq(Vec::new())
                };
                self.stack.push(Frame {
                    node,
                    mark,
                    key: None,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(done) = self.stack.pop() {
                    self.push_value(done.node, done.mark);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items() {
        let t = "a:\n  b: [x, y]\n  c:\n    - d: 1\n    - e: 2\n";
        assert_eq!(locate(t, "a"), Some((1, 1)));
        assert_eq!(locate(t, "a.b[1]"), Some((2, 10)));
        assert_eq!(locate(t, "a.c[1].e"), Some((5, 7)));
        assert_eq!(locate(t, "a.c[1]"), Some((5, 7)));
        // A missing field: the deepest part that is there.
        assert_eq!(locate(t, "a.c[0].zzz"), Some((4, 7)));
        assert_eq!(locate(t, "z"), None);
        assert_eq!(locate(t, "a[0"), None);
    }

    #[test]
    fn finds_fields_in_json() {
        let t = "{\n  \"base\": {\"error_rate\": 2},\n  \"effects\": [{\"kind\": \"noise\"}]\n}";
        assert_eq!(locate(t, "base.error_rate"), Some((2, 12)));
        assert_eq!(locate(t, "effects[0].kind"), Some((3, 16)));
    }
}
