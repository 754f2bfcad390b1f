//! WSDL 1.1 → one SOAP connection file.
//!
//! [`convert`] reads a WSDL 1.1 document with its inline XML Schema types and writes connection
//! metadata as YAML text: the endpoint of the first service port bound to SOAP 1.1 or 1.2,
//! and one function per operation of that port's binding, with its `action`, a `body` template
//! that renders the request element with every input field, an `input_schema` derived from the
//! XSD types, and an `output` mapping with its `output_schema` from the response element.
//! Document/literal (wrapped and bare) and RPC/literal are read; SOAP encoding is not.
//!
//! It is pure (bytes in, text out) and refuses what it cannot convert faithfully, with the
//! line of the WSDL at fault: a DOCTYPE (no DTD or entity is ever read), a document that is not
//! WSDL 1.1, no SOAP binding, external imports (`wsdl:import`, `xs:import` with a
//! `schemaLocation`, `xs:include`), and types it cannot find.
//!
//! How types become JSON: `string`-like types are strings (`date` and `dateTime` with a
//! `format`), integer types integers, `decimal`/`double`/`float` numbers, `boolean` booleans;
//! `minOccurs="0"` makes a field optional (the template leaves its element out when the input
//! has no value), `maxOccurs` above 1 makes it an array (the template loops); a complex type is
//! an object, except a complex type holding only one repeated element (an "array type", like
//! `ArrayOfLine`), which is the array of its items.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::rc::Rc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

const WSDL: &str = "http://schemas.xmlsoap.org/wsdl/";
const WSDL20: &str = "http://www.w3.org/ns/wsdl";
const SOAP11_BINDING: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
const SOAP12_BINDING: &str = "http://schemas.xmlsoap.org/wsdl/soap12/";
const XSD: &str = "http://www.w3.org/2001/XMLSchema";

/// Deepest nesting of XML elements read.
const MAX_DEPTH: usize = 128;
/// Deepest nesting of types followed; deeper (or recursive) types are refused.
const MAX_TYPE_DEPTH: usize = 32;

/// What the generated connection is called and how it may be reached.
#[derive(Debug, Clone)]
pub struct WsdlOptions {
    /// The connection's name (and the file's: `NAME.yaml`).
    pub connection: String,
    /// Write `allow_private_network: true` (for services on loopback or a private network).
    pub allow_private_network: bool,
}

/// Why a WSDL cannot be converted, with the line (1-based) it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct WsdlError {
    pub line: usize,
    pub message: String,
}

fn fail<T>(line: usize, message: impl Into<String>) -> Result<T, WsdlError> {
    Err(WsdlError {
        line,
        message: message.into(),
    })
}

/// Converts the WSDL 1.1 document `bytes` into connection metadata (YAML text). `source` names
/// the document in the file's opening comment.
///
/// # Errors
/// The document is not well-formed XML, declares a DOCTYPE, is not WSDL 1.1, has no SOAP
/// binding with an address, imports other documents, uses SOAP encoding, or refers to a type
/// or message it does not define.
pub fn convert(bytes: &[u8], source: &str, options: &WsdlOptions) -> Result<String, WsdlError> {
    let root = parse(bytes)?;
    let doc = Document::read(&root)?;
    let port = doc.soap_port(&root)?;
    let mut operations = Vec::new();
    for op in port.binding.children_of(WSDL, "operation") {
        operations.push(doc.operation(&port, op)?);
    }
    Ok(render(source, options, &port, &operations))
}

// ---------------------------------------------------------------------------------------------
// XML, read with line numbers and namespace scopes (QName attribute values need them).

struct Node {
    ns: Option<String>,
    name: String,
    attrs: Vec<(String, String)>,
    /// Prefix (`""` for the default namespace) → namespace, as in scope at this element.
    scope: Rc<HashMap<String, String>>,
    children: Vec<Node>,
    line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QName {
    ns: String,
    local: String,
}

impl Node {
    fn is(&self, ns: &str, name: &str) -> bool {
        self.ns.as_deref() == Some(ns) && self.name == name
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn children_of<'a>(&'a self, ns: &'a str, name: &'a str) -> impl Iterator<Item = &'a Node> {
        self.children.iter().filter(move |c| c.is(ns, name))
    }

    fn child(&self, ns: &str, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.is(ns, name))
    }

    fn required(&self, name: &str) -> Result<&str, WsdlError> {
        match self.attr(name) {
            Some(v) => Ok(v),
            None => fail(
                self.line,
                format!("<{}> has no `{name}` attribute", self.name),
            ),
        }
    }

    /// The QName in attribute `name`, resolved in this element's scope.
    fn qname(&self, name: &str) -> Result<QName, WsdlError> {
        let text = self.required(name)?.trim();
        let (prefix, local) = text.split_once(':').unwrap_or(("", text));
        let ns = match self.scope.get(prefix) {
            Some(ns) => ns.clone(),
            None if prefix.is_empty() => String::new(),
            None => {
                return fail(
                    self.line,
                    format!("{name}=\"{text}\" uses the prefix `{prefix}`, which is not declared"),
                );
            }
        };
        Ok(QName {
            ns,
            local: local.to_string(),
        })
    }
}

struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines(starts)
    }

    fn at(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset).max(1)
    }
}

fn parse(bytes: &[u8]) -> Result<Node, WsdlError> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let line = bytes[..err.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            return fail(line + 1, "the WSDL is not UTF-8 text");
        }
    };
    let lines = Lines::new(text);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if !text.trim_start().starts_with('<') {
        return fail(1, "the file is not XML; expected a WSDL 1.1 document");
    }
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let line = lines.at(usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX));
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(err) => {
                let at = usize::try_from(reader.error_position()).unwrap_or(usize::MAX);
                return fail(
                    lines.at(at),
                    format!("the WSDL is not well-formed XML: {err}"),
                );
            }
        };
        match event {
            Event::DocType(_) => {
                return fail(
                    line,
                    "the WSDL declares a DOCTYPE, which is refused: no DTD or entity is ever read",
                );
            }
            Event::Start(e) | Event::Empty(e) if root.is_some() && stack.is_empty() => {
                let _ = e;
                return fail(line, "a second root element");
            }
            Event::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return fail(
                        line,
                        format!("elements nest deeper than {MAX_DEPTH} levels"),
                    );
                }
                let node = open(&e, stack.last(), line)?;
                stack.push(node);
            }
            Event::Empty(e) => {
                let node = open(&e, stack.last(), line)?;
                close(&mut stack, &mut root, node);
            }
            Event::End(_) => match stack.pop() {
                Some(node) => close(&mut stack, &mut root, node),
                None => return fail(line, "an end tag with no start"),
            },
            Event::Eof => {
                if let Some(open) = stack.last() {
                    return fail(
                        line,
                        format!(
                            "the WSDL ends before element <{}> (line {}) is closed",
                            open.name, open.line
                        ),
                    );
                }
                return match root {
                    Some(root) => Ok(root),
                    None => fail(1, "the file holds no XML element"),
                };
            }
            _ => {}
        }
    }
}

fn open(start: &BytesStart<'_>, parent: Option<&Node>, line: usize) -> Result<Node, WsdlError> {
    let mut scope = parent.map_or_else(|| Rc::new(HashMap::new()), |p| Rc::clone(&p.scope));
    let mut attrs = Vec::new();
    let mut declared = Vec::new();
    for attribute in start.attributes() {
        let attribute = match attribute {
            Ok(a) => a,
            Err(err) => return fail(line, format!("a malformed attribute: {err}")),
        };
        let key = attribute.key.as_ref().to_string();
        let value = match attribute.normalized_value(quick_xml::XmlVersion::Implicit1_0) {
            Ok(v) => v.into_owned(),
            Err(err) => {
                return fail(
                    line,
                    format!(
                        "the value of `{key}` cannot be read: {err}; only XML's predefined entities and character references are read"
                    ),
                );
            }
        };
        if key == "xmlns" {
            declared.push((String::new(), value));
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            declared.push((prefix.to_string(), value));
        } else {
            attrs.push((key, value));
        }
    }
    if !declared.is_empty() {
        let mut map = (*scope).clone();
        map.extend(declared);
        scope = Rc::new(map);
    }
    let raw = start.name().as_ref().to_string();
    let (prefix, name) = raw.split_once(':').unwrap_or(("", raw.as_str()));
    let ns = match scope.get(prefix) {
        Some(ns) if !ns.is_empty() => Some(ns.clone()),
        Some(_) => None,
        None if prefix.is_empty() => None,
        None => {
            return fail(
                line,
                format!("the prefix `{prefix}` of <{raw}> is not declared"),
            );
        }
    };
    Ok(Node {
        ns,
        name: name.to_string(),
        attrs,
        scope,
        children: Vec::new(),
        line,
    })
}

fn close(stack: &mut [Node], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => *root = Some(node),
    }
}

// ---------------------------------------------------------------------------------------------
// The WSDL's parts, indexed by name.

struct Schema {
    target: String,
    qualified: bool,
}

/// A declaration and the schema (index) it belongs to.
#[derive(Clone, Copy)]
struct Decl<'a> {
    node: &'a Node,
    schema: usize,
}

struct Document<'a> {
    schemas: Vec<Schema>,
    elements: HashMap<QName, Decl<'a>>,
    types: HashMap<QName, Decl<'a>>,
    messages: HashMap<QName, &'a Node>,
    port_types: HashMap<QName, &'a Node>,
    bindings: HashMap<QName, &'a Node>,
}

/// The service port whose binding is converted.
struct Port<'a> {
    service: String,
    name: String,
    binding: &'a Node,
    port_type: &'a Node,
    soap12: bool,
    location: String,
    /// The binding extension namespace (`soap:` or `soap12:`).
    soap_ns: &'static str,
    default_style: Style,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Document,
    Rpc,
}

impl<'a> Document<'a> {
    fn read(root: &'a Node) -> Result<Document<'a>, WsdlError> {
        if root.is(WSDL20, "description") {
            return fail(
                root.line,
                "this is a WSDL 2.0 document, which is not supported; expected WSDL 1.1 (<definitions xmlns=\"http://schemas.xmlsoap.org/wsdl/\">)",
            );
        }
        if !root.is(WSDL, "definitions") {
            let ns = root.ns.as_deref().unwrap_or("no namespace");
            return fail(
                root.line,
                format!(
                    "not a WSDL 1.1 document: the root element is <{}> in {ns}; expected <definitions> in {WSDL}",
                    root.name
                ),
            );
        }
        if let Some(import) = root.child(WSDL, "import") {
            let location = import.attr("location").unwrap_or("(no location)");
            return fail(
                import.line,
                format!(
                    "wsdl:import of \"{location}\": external imports are not supported yet; save the imported documents' content into this WSDL"
                ),
            );
        }
        let target = root.attr("targetNamespace").unwrap_or_default().to_string();
        let mut doc = Document {
            schemas: Vec::new(),
            elements: HashMap::new(),
            types: HashMap::new(),
            messages: HashMap::new(),
            port_types: HashMap::new(),
            bindings: HashMap::new(),
        };
        for types in root.children_of(WSDL, "types") {
            for schema in types.children_of(XSD, "schema") {
                doc.add_schema(schema)?;
            }
        }
        let named = |node: &'a Node| -> Result<(QName, &'a Node), WsdlError> {
            let local = node.required("name")?.to_string();
            Ok((
                QName {
                    ns: target.clone(),
                    local,
                },
                node,
            ))
        };
        for child in &root.children {
            if child.is(WSDL, "message") {
                let (q, n) = named(child)?;
                doc.messages.insert(q, n);
            } else if child.is(WSDL, "portType") {
                let (q, n) = named(child)?;
                doc.port_types.insert(q, n);
            } else if child.is(WSDL, "binding") {
                let (q, n) = named(child)?;
                doc.bindings.insert(q, n);
            }
        }
        Ok(doc)
    }

    fn add_schema(&mut self, schema: &'a Node) -> Result<(), WsdlError> {
        let index = self.schemas.len();
        let target = schema
            .attr("targetNamespace")
            .unwrap_or_default()
            .to_string();
        self.schemas.push(Schema {
            target: target.clone(),
            qualified: schema.attr("elementFormDefault") == Some("qualified"),
        });
        for child in &schema.children {
            if child.ns.as_deref() != Some(XSD) {
                continue;
            }
            let key = |node: &Node| -> Result<QName, WsdlError> {
                Ok(QName {
                    ns: target.clone(),
                    local: node.required("name")?.to_string(),
                })
            };
            let decl = Decl {
                node: child,
                schema: index,
            };
            match child.name.as_str() {
                "import" if child.attr("schemaLocation").is_some() => {
                    return fail(
                        child.line,
                        format!(
                            "xs:import of \"{}\": external imports are not supported yet; paste the imported schema into the WSDL's <types>",
                            child.attr("schemaLocation").unwrap_or_default()
                        ),
                    );
                }
                "include" | "redefine" => {
                    return fail(
                        child.line,
                        format!(
                            "xs:{} of \"{}\": external schemas are not supported yet; paste the schema into the WSDL's <types>",
                            child.name,
                            child.attr("schemaLocation").unwrap_or_default()
                        ),
                    );
                }
                "element" => {
                    self.elements.insert(key(child)?, decl);
                }
                "complexType" | "simpleType" => {
                    self.types.insert(key(child)?, decl);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The first service port bound to SOAP 1.1 or 1.2.
    fn soap_port(&self, root: &'a Node) -> Result<Port<'a>, WsdlError> {
        let mut soap_bindings = 0;
        for binding in root.children_of(WSDL, "binding") {
            if binding.child(SOAP11_BINDING, "binding").is_some()
                || binding.child(SOAP12_BINDING, "binding").is_some()
            {
                soap_bindings += 1;
            }
        }
        if soap_bindings == 0 {
            let at = root.child(WSDL, "binding").map_or(root.line, |b| b.line);
            return fail(
                at,
                "the WSDL has no SOAP binding: no <binding> holds a <soap:binding> or <soap12:binding> (HTTP-only bindings cannot be imported)",
            );
        }
        for service in root.children_of(WSDL, "service") {
            for port in service.children_of(WSDL, "port") {
                let reference = port.qname("binding")?;
                let Some(binding) = self.bindings.get(&reference) else {
                    return fail(
                        port.line,
                        format!(
                            "port `{}` names the binding `{}`, which the WSDL does not define",
                            port.attr("name").unwrap_or_default(),
                            reference.local
                        ),
                    );
                };
                let (soap_ns, soap12) = if binding.child(SOAP11_BINDING, "binding").is_some() {
                    (SOAP11_BINDING, false)
                } else if binding.child(SOAP12_BINDING, "binding").is_some() {
                    (SOAP12_BINDING, true)
                } else {
                    continue;
                };
                let Some(address) = port.child(soap_ns, "address") else {
                    return fail(
                        port.line,
                        "this SOAP port has no <soap:address location=\"...\">",
                    );
                };
                let location = address.required("location")?.to_string();
                let type_ref = binding.qname("type")?;
                let Some(port_type) = self.port_types.get(&type_ref) else {
                    return fail(
                        binding.line,
                        format!(
                            "binding `{}` is of port type `{}`, which the WSDL does not define",
                            binding.attr("name").unwrap_or_default(),
                            type_ref.local
                        ),
                    );
                };
                let default_style = match binding
                    .child(soap_ns, "binding")
                    .and_then(|b| b.attr("style"))
                {
                    Some("rpc") => Style::Rpc,
                    _ => Style::Document,
                };
                return Ok(Port {
                    service: service.attr("name").unwrap_or_default().to_string(),
                    name: port.attr("name").unwrap_or_default().to_string(),
                    binding,
                    port_type,
                    soap12,
                    location,
                    soap_ns,
                    default_style,
                });
            }
        }
        fail(
            root.line,
            "the WSDL has a SOAP binding but no <service> port that uses it with a <soap:address>",
        )
    }

    fn operation(&self, port: &Port<'a>, op: &'a Node) -> Result<Operation, WsdlError> {
        let name = op.required("name")?.to_string();
        let soap_op = op.child(port.soap_ns, "operation");
        let action = soap_op
            .and_then(|o| o.attr("soapAction"))
            .filter(|a| !a.is_empty())
            .map(str::to_string);
        let style = match soap_op.and_then(|o| o.attr("style")) {
            Some("rpc") => Style::Rpc,
            Some(_) => Style::Document,
            None => port.default_style,
        };
        let Some(abstract_op) = port
            .port_type
            .children_of(WSDL, "operation")
            .find(|o| o.attr("name") == Some(name.as_str()))
        else {
            return fail(
                op.line,
                format!(
                    "binding operation `{name}` has no operation of that name in the port type"
                ),
            );
        };
        let input = match (abstract_op.child(WSDL, "input"), op.child(WSDL, "input")) {
            (Some(abstract_io), bound) => {
                Some(self.body(port, &name, style, abstract_io, bound, false)?)
            }
            (None, _) => None,
        };
        let Some(input) = input else {
            return fail(
                abstract_op.line,
                format!(
                    "operation `{name}` has no input; notification operations cannot be imported"
                ),
            );
        };
        let output = match abstract_op.child(WSDL, "output") {
            Some(abstract_io) => Some(self.body(
                port,
                &name,
                style,
                abstract_io,
                op.child(WSDL, "output"),
                true,
            )?),
            None => None,
        };
        Ok(Operation {
            name,
            action,
            style,
            input,
            output,
        })
    }

    /// The body of one direction of an operation.
    fn body(
        &self,
        port: &Port<'a>,
        operation: &str,
        style: Style,
        abstract_io: &'a Node,
        bound: Option<&'a Node>,
        response: bool,
    ) -> Result<Body, WsdlError> {
        let soap_body = bound.and_then(|b| b.child(port.soap_ns, "body"));
        if let Some(sb) = soap_body
            && sb.attr("use") == Some("encoded")
        {
            return fail(
                sb.line,
                format!(
                    "operation `{operation}` uses SOAP encoding (use=\"encoded\"), which is not supported; only use=\"literal\" is"
                ),
            );
        }
        let only: Option<Vec<&str>> = soap_body
            .and_then(|b| b.attr("parts"))
            .map(|p| p.split_whitespace().collect());
        let reference = abstract_io.qname("message")?;
        let Some(message) = self.messages.get(&reference) else {
            return fail(
                abstract_io.line,
                format!(
                    "operation `{operation}` uses the message `{}`, which the WSDL does not define",
                    reference.local
                ),
            );
        };
        let mut parts = Vec::new();
        for part in message.children_of(WSDL, "part") {
            let part_name = part.required("name")?;
            if only.as_ref().is_some_and(|o| !o.contains(&part_name)) {
                continue;
            }
            let field = match (style, part.attr("element"), part.attr("type")) {
                (_, Some(_), _) => {
                    let mut field = self.global_element(part, &part.qname("element")?, 0)?;
                    field.key = part_name.to_string();
                    field
                }
                (Style::Rpc, None, Some(_)) => Field {
                    key: part_name.to_string(),
                    name: part_name.to_string(),
                    ns: None,
                    optional: false,
                    repeated: false,
                    shape: self.type_shape(part, &part.qname("type")?, 0)?,
                },
                (Style::Document, None, Some(_)) => {
                    return fail(
                        part.line,
                        format!(
                            "part `{part_name}` of a document-style operation names a type; document style needs element=\"...\""
                        ),
                    );
                }
                (_, None, None) => {
                    return fail(
                        part.line,
                        format!("part `{part_name}` has neither element nor type"),
                    );
                }
            };
            parts.push(field);
        }
        let wrapper = match style {
            Style::Document => None,
            Style::Rpc => Some((
                soap_body
                    .and_then(|b| b.attr("namespace"))
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
                if response {
                    format!("{operation}Response")
                } else {
                    operation.to_string()
                },
            )),
        };
        Ok(Body { parts, wrapper })
    }

    fn global_element(&self, at: &Node, name: &QName, depth: usize) -> Result<Field, WsdlError> {
        let Some(decl) = self.elements.get(name) else {
            return fail(
                at.line,
                format!(
                    "the element `{}` ({}) is not declared in the WSDL's inline schemas",
                    name.local, name.ns
                ),
            );
        };
        self.element(decl.node, decl.schema, true, depth)
    }

    /// An `xs:element` as a field.
    fn element(
        &self,
        node: &Node,
        schema: usize,
        global: bool,
        depth: usize,
    ) -> Result<Field, WsdlError> {
        if depth > MAX_TYPE_DEPTH {
            return fail(
                node.line,
                format!(
                    "types nest deeper than {MAX_TYPE_DEPTH} levels here (a recursive type?), which cannot be imported"
                ),
            );
        }
        let optional = node.attr("minOccurs").is_some_and(|m| m.trim() == "0");
        let repeated = match node.attr("maxOccurs").map(str::trim) {
            Some("unbounded") => true,
            Some(n) => n.parse::<u64>().is_ok_and(|n| n > 1),
            None => false,
        };
        if node.attr("ref").is_some() {
            let mut field = self.global_element(node, &node.qname("ref")?, depth + 1)?;
            field.optional = optional;
            field.repeated = repeated;
            return Ok(field);
        }
        let name = node.required("name")?.to_string();
        let qualified = global
            || match node.attr("form") {
                Some(form) => form == "qualified",
                None => self.schemas[schema].qualified,
            };
        let shape = if node.attr("type").is_some() {
            self.type_shape(node, &node.qname("type")?, depth + 1)?
        } else if let Some(complex) = node.child(XSD, "complexType") {
            self.complex(complex, schema, depth + 1)?
        } else if let Some(simple) = node.child(XSD, "simpleType") {
            self.simple(simple, depth + 1)?
        } else {
            Shape::Any
        };
        Ok(Field {
            key: name.clone(),
            ns: qualified.then(|| self.schemas[schema].target.clone()),
            name,
            optional,
            repeated,
            shape,
        })
    }

    fn type_shape(&self, at: &Node, name: &QName, depth: usize) -> Result<Shape, WsdlError> {
        if name.ns == XSD {
            return Ok(builtin(&name.local));
        }
        if depth > MAX_TYPE_DEPTH {
            return fail(
                at.line,
                format!(
                    "types nest deeper than {MAX_TYPE_DEPTH} levels at `{}` (a recursive type?), which cannot be imported",
                    name.local
                ),
            );
        }
        let Some(decl) = self.types.get(name) else {
            return fail(
                at.line,
                format!(
                    "the type `{}` ({}) is not defined in the WSDL's inline schemas",
                    name.local, name.ns
                ),
            );
        };
        if decl.node.name == "simpleType" {
            self.simple(decl.node, depth + 1)
        } else {
            self.complex(decl.node, decl.schema, depth + 1)
        }
    }

    fn simple(&self, node: &Node, depth: usize) -> Result<Shape, WsdlError> {
        match node.child(XSD, "restriction") {
            Some(r) if r.attr("base").is_some() => self.type_shape(r, &r.qname("base")?, depth),
            _ => Ok(Shape::Scalar(Scalar::String)),
        }
    }

    fn complex(&self, node: &Node, schema: usize, depth: usize) -> Result<Shape, WsdlError> {
        let mut fields = Vec::new();
        for child in &node.children {
            if child.ns.as_deref() != Some(XSD) {
                continue;
            }
            match child.name.as_str() {
                "sequence" | "all" | "choice" => {
                    self.particles(child, schema, false, depth, &mut fields)?;
                }
                "complexContent" => {
                    for derived in &child.children {
                        if derived.is(XSD, "extension") {
                            if let Shape::Complex(base) =
                                self.type_shape(derived, &derived.qname("base")?, depth + 1)?
                            {
                                fields.extend(base);
                            }
                            self.complex_particles(derived, schema, depth, &mut fields)?;
                        } else if derived.is(XSD, "restriction") {
                            self.complex_particles(derived, schema, depth, &mut fields)?;
                        }
                    }
                }
                "simpleContent" => {
                    // Text with attributes: the attributes are not carried; the text is.
                    let base = child
                        .children
                        .iter()
                        .find(|d| d.attr("base").is_some())
                        .map(|d| {
                            d.qname("base")
                                .and_then(|q| self.type_shape(d, &q, depth + 1))
                        })
                        .transpose()?;
                    return Ok(base.unwrap_or(Shape::Scalar(Scalar::String)));
                }
                _ => {}
            }
        }
        Ok(Shape::Complex(fields))
    }

    fn complex_particles(
        &self,
        derived: &Node,
        schema: usize,
        depth: usize,
        fields: &mut Vec<Field>,
    ) -> Result<(), WsdlError> {
        for group in &derived.children {
            if group.is(XSD, "sequence") || group.is(XSD, "all") || group.is(XSD, "choice") {
                self.particles(group, schema, false, depth, fields)?;
            }
        }
        Ok(())
    }

    /// The elements of a model group (`sequence`, `all`, `choice`), in order.
    fn particles(
        &self,
        group: &Node,
        schema: usize,
        optional: bool,
        depth: usize,
        fields: &mut Vec<Field>,
    ) -> Result<(), WsdlError> {
        // In a choice, each branch may be absent; a group that may be absent makes all of
        // its elements optional.
        let optional = optional
            || group.name == "choice"
            || group.attr("minOccurs").is_some_and(|m| m.trim() == "0");
        for child in &group.children {
            if child.is(XSD, "element") {
                let mut field = self.element(child, schema, false, depth + 1)?;
                field.optional |= optional;
                fields.push(field);
            } else if child.is(XSD, "sequence") || child.is(XSD, "choice") || child.is(XSD, "all") {
                self.particles(child, schema, optional, depth, fields)?;
            } else if child.is(XSD, "group") {
                return fail(
                    child.line,
                    "xs:group references are not supported yet; write the group's elements in place",
                );
            }
        }
        Ok(())
    }
}

fn builtin(local: &str) -> Shape {
    Shape::Scalar(match local {
        "int" | "integer" | "long" | "short" | "byte" | "unsignedInt" | "unsignedLong"
        | "unsignedShort" | "unsignedByte" | "nonNegativeInteger" | "positiveInteger"
        | "nonPositiveInteger" | "negativeInteger" => Scalar::Integer,
        "decimal" | "double" | "float" => Scalar::Number,
        "boolean" => Scalar::Boolean,
        "date" => Scalar::Date,
        "dateTime" => Scalar::DateTime,
        "anyType" => return Shape::Any,
        _ => Scalar::String,
    })
}

// ---------------------------------------------------------------------------------------------
// What an operation sends and receives.

struct Operation {
    name: String,
    action: Option<String>,
    style: Style,
    input: Body,
    output: Option<Body>,
}

struct Body {
    parts: Vec<Field>,
    /// The RPC wrapper element (namespace, name); `None` in document style.
    wrapper: Option<(Option<String>, String)>,
}

#[derive(Clone)]
struct Field {
    /// The name in JSON.
    key: String,
    /// The element's local name.
    name: String,
    /// The element's namespace when it is qualified.
    ns: Option<String>,
    optional: bool,
    repeated: bool,
    shape: Shape,
}

#[derive(Clone)]
enum Shape {
    Scalar(Scalar),
    Complex(Vec<Field>),
    Any,
}

#[derive(Clone, Copy)]
enum Scalar {
    String,
    Integer,
    Number,
    Boolean,
    Date,
    DateTime,
}

impl Shape {
    /// The item of an "array type": a complex type holding one repeated element only.
    fn array_item(&self) -> Option<&Field> {
        match self {
            Shape::Complex(fields) if fields.len() == 1 && fields[0].repeated => Some(&fields[0]),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering: YAML text, written in a deliberate order.

/// A YAML value: a scalar (already written), a block mapping, or a flow list of scalars.
enum Yaml {
    Scalar(String),
    Map(Vec<(String, Yaml)>),
    Flow(Vec<String>),
}

fn scalar(text: &str) -> String {
    let plain = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '/')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '.' | '-'))
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        text.to_string()
    } else {
        serde_json::Value::String(text.to_string()).to_string()
    }
}

fn write_yaml(out: &mut String, entries: &[(String, Yaml)], indent: usize) {
    let pad = " ".repeat(indent);
    for (key, value) in entries {
        let key = scalar(key);
        match value {
            Yaml::Scalar(s) => {
                let _ = writeln!(out, "{pad}{key}: {s}");
            }
            Yaml::Flow(items) => {
                let _ = writeln!(out, "{pad}{key}: [{}]", items.join(", "));
            }
            Yaml::Map(inner) if inner.is_empty() => {
                let _ = writeln!(out, "{pad}{key}: {{}}");
            }
            Yaml::Map(inner) => {
                let _ = writeln!(out, "{pad}{key}:");
                write_yaml(out, inner, indent + 2);
            }
        }
    }
}

fn render(
    source: &str,
    options: &WsdlOptions,
    port: &Port<'_>,
    operations: &[Operation],
) -> String {
    let version = if port.soap12 { "1.2" } else { "1.1" };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by `switchboard import wsdl` from {source}:"
    );
    let _ = writeln!(
        out,
        "# service {}, port {}, SOAP {version}, {} operation{}.",
        port.service,
        port.name,
        operations.len(),
        if operations.len() == 1 { "" } else { "s" }
    );
    out.push_str("# Check it with `switchboard validate`; edit freely.\n");
    let mut top = vec![
        (
            "connection".to_string(),
            Yaml::Scalar(scalar(&options.connection)),
        ),
        ("type".to_string(), Yaml::Scalar("soap".into())),
        (
            "description".to_string(),
            Yaml::Scalar(scalar(&format!(
                "{} (imported from {source})",
                port.service
            ))),
        ),
        ("endpoint".to_string(), Yaml::Scalar(scalar(&port.location))),
        (
            "soap_version".to_string(),
            Yaml::Scalar(format!("\"{version}\"")),
        ),
    ];
    if options.allow_private_network {
        top.push((
            "allow_private_network".to_string(),
            Yaml::Scalar("true".into()),
        ));
    }
    write_yaml(&mut out, &top, 0);
    if operations.is_empty() {
        return out;
    }
    out.push_str("functions:\n");
    let mut taken: Vec<String> = Vec::new();
    for op in operations {
        let mut name = function_name(&op.name);
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("{}_{n}", function_name(&op.name));
            n += 1;
        }
        taken.push(name.clone());
        let _ = writeln!(out, "  {name}:");
        let style = match op.style {
            Style::Document => "document/literal",
            Style::Rpc => "rpc/literal",
        };
        let mut entries = vec![(
            "description".to_string(),
            Yaml::Scalar(scalar(&format!("SOAP operation {} ({style})", op.name))),
        )];
        if let Some(action) = &op.action {
            entries.push(("action".to_string(), Yaml::Scalar(scalar(action))));
        }
        write_yaml(&mut out, &entries, 4);
        out.push_str("    body: |\n");
        for line in body_template(&op.input).lines() {
            let _ = writeln!(out, "      {line}");
        }
        let mut rest = vec![("input_schema".to_string(), input_schema(&op.input))];
        if let Some(output) = &op.output {
            let (schema, map) = output_mapping(output);
            if !map.is_empty() {
                rest.push(("output_schema".to_string(), schema));
                rest.push(("output".to_string(), Yaml::Map(map)));
            }
        }
        write_yaml(&mut out, &rest, 4);
    }
    out
}

/// `CreateOrder` → `create_order`, `getHTTPStatus` → `get_http_status`.
fn function_name(operation: &str) -> String {
    let chars: Vec<char> = operation.chars().collect();
    let mut name = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_alphanumeric() {
            let boundary = c.is_ascii_uppercase()
                && i > 0
                && (chars[i - 1].is_ascii_lowercase()
                    || chars[i - 1].is_ascii_digit()
                    || (chars[i - 1].is_ascii_uppercase()
                        && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase())));
            if boundary && !name.ends_with('_') {
                name.push('_');
            }
            name.push(c.to_ascii_lowercase());
        } else if !name.is_empty() && !name.ends_with('_') {
            name.push('_');
        }
    }
    let name = name.trim_end_matches('_').to_string();
    let name = if name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name
    } else {
        format!("op_{name}")
    };
    name.chars().take(64).collect()
}

// The input: a template and a schema.

/// Namespace prefixes used by one template, declared on its root element.
#[derive(Default)]
struct Prefixes {
    used: Vec<String>,
    loops: usize,
}

impl Prefixes {
    fn tag(&mut self, field_ns: Option<&str>, name: &str) -> String {
        match field_ns {
            None => name.to_string(),
            Some(ns) => {
                let index = match self.used.iter().position(|u| u == ns) {
                    Some(i) => i,
                    None => {
                        self.used.push(ns.to_string());
                        self.used.len() - 1
                    }
                };
                format!("ns{}:{name}", index + 1)
            }
        }
    }

    fn declarations(&self) -> String {
        self.used
            .iter()
            .enumerate()
            .map(|(i, ns)| format!(" xmlns:ns{}=\"{}\"", i + 1, xml_attr(ns)))
            .collect()
    }
}

fn xml_attr(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

/// `expr.key`, or `expr["key"]` where the key is not a plain name.
fn member(expr: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !matches!(
            key,
            "and"
                | "or"
                | "not"
                | "in"
                | "is"
                | "if"
                | "else"
                | "true"
                | "false"
                | "none"
                | "True"
                | "False"
                | "None"
                | "loop"
        );
    if plain {
        format!("{expr}.{key}")
    } else {
        format!("{expr}[{}]", serde_json::Value::String(key.to_string()))
    }
}

/// Whether the input of `body` is the children of its one part's element (document style
/// with one complex element, wrapped or bare) rather than one field per part.
fn flattened(body: &Body) -> Option<&Field> {
    match (&body.wrapper, body.parts.as_slice()) {
        (None, [part])
            if matches!(part.shape, Shape::Complex(_)) && part.shape.array_item().is_none() =>
        {
            Some(part)
        }
        _ => None,
    }
}

fn body_template(body: &Body) -> String {
    let mut prefixes = Prefixes::default();
    let mut lines = Vec::new();
    let root_tag;
    if let Some(part) = flattened(body) {
        root_tag = prefixes.tag(part.ns.as_deref(), &part.name);
        content(&part.shape, "input", &mut prefixes, 1, &mut lines);
    } else if let Some((ns, name)) = &body.wrapper {
        root_tag = prefixes.tag(ns.as_deref(), name);
        for part in &body.parts {
            element(
                part,
                &member("input", &part.key),
                &mut prefixes,
                1,
                &mut lines,
            );
        }
    } else {
        // Document style, several parts or one simple one: the elements one after another.
        let mut out = Vec::new();
        for part in &body.parts {
            element(
                part,
                &member("input", &part.key),
                &mut prefixes,
                0,
                &mut out,
            );
        }
        let declarations = prefixes.declarations();
        return add_declarations(out, &declarations);
    }
    let declarations = prefixes.declarations();
    if lines.is_empty() {
        return format!("<{root_tag}{declarations}/>\n");
    }
    let mut text = format!("<{root_tag}{declarations}>\n");
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    let _ = writeln!(text, "</{root_tag}>");
    text
}

/// Top-level elements of a bare body each declare the prefixes.
fn add_declarations(lines: Vec<String>, declarations: &str) -> String {
    let mut text = String::new();
    for line in lines {
        // Only lines that open a top-level element (no indentation) get the declarations.
        let line = if !line.starts_with(' ') && !declarations.is_empty() {
            insert_declarations(&line, declarations)
        } else {
            line
        };
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn insert_declarations(line: &str, declarations: &str) -> String {
    // The first `<name` of the line that is not a template tag.
    let mut search = 0;
    while let Some(found) = line[search..].find('<') {
        let at = search + found;
        let rest = &line[at + 1..];
        if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            let end = rest
                .find(['>', '/', ' '])
                .map_or(line.len(), |e| at + 1 + e);
            return format!("{}{declarations}{}", &line[..end], &line[end..]);
        }
        search = at + 1;
    }
    line.to_string()
}

/// The lines of `field`'s element, its value at `expr`.
fn element(
    field: &Field,
    expr: &str,
    prefixes: &mut Prefixes,
    indent: usize,
    out: &mut Vec<String>,
) {
    let pad = "  ".repeat(indent);
    let tag = prefixes.tag(field.ns.as_deref(), &field.name);
    let guard = field.optional;
    let (open, close, value) = if field.repeated {
        prefixes.loops += 1;
        let var = format!("item{}", prefixes.loops);
        (
            format!("{{% for {var} in {expr} %}}"),
            "{% endfor %}".to_string(),
            var,
        )
    } else {
        (String::new(), String::new(), expr.to_string())
    };
    let (guard_open, guard_close) = if guard {
        (
            format!("{{% if {expr} is defined and {expr} is not none %}}"),
            "{% endif %}".to_string(),
        )
    } else {
        (String::new(), String::new())
    };
    match &field.shape {
        Shape::Scalar(_) | Shape::Any => out.push(format!(
            "{pad}{guard_open}{open}<{tag}>{{{{ {value} }}}}</{tag}>{close}{guard_close}"
        )),
        shape => {
            let mut inner = Vec::new();
            content(shape, &value, prefixes, indent + 1, &mut inner);
            if inner.is_empty() {
                out.push(format!(
                    "{pad}{guard_open}{open}<{tag}/>{close}{guard_close}"
                ));
            } else {
                out.push(format!("{pad}{guard_open}{open}<{tag}>"));
                out.extend(inner);
                out.push(format!("{pad}</{tag}>{close}{guard_close}"));
            }
        }
    }
}

/// The lines inside an element of `shape`, its value at `expr`.
fn content(
    shape: &Shape,
    expr: &str,
    prefixes: &mut Prefixes,
    indent: usize,
    out: &mut Vec<String>,
) {
    if let Some(item) = shape.array_item() {
        // The JSON value is the array itself; its presence was checked by the caller.
        let item = Field {
            optional: false,
            ..item.clone()
        };
        element(&item, expr, prefixes, indent, out);
        return;
    }
    match shape {
        Shape::Complex(fields) => {
            for field in fields {
                element(field, &member(expr, &field.key), prefixes, indent, out);
            }
        }
        Shape::Scalar(_) | Shape::Any => {
            out.push(format!("{}{{{{ {expr} }}}}", "  ".repeat(indent)));
        }
    }
}

fn input_schema(body: &Body) -> Yaml {
    if let Some(part) = flattened(body) {
        return shape_input(&part.shape);
    }
    object_input(&body.parts)
}

fn object_input(fields: &[Field]) -> Yaml {
    let mut entries = vec![("type".to_string(), Yaml::Scalar("object".into()))];
    let required: Vec<String> = fields
        .iter()
        .filter(|f| !f.optional)
        .map(|f| scalar(&f.key))
        .collect();
    if !required.is_empty() {
        entries.push(("required".to_string(), Yaml::Flow(required)));
    }
    entries.push((
        "additionalProperties".to_string(),
        Yaml::Scalar("false".into()),
    ));
    if !fields.is_empty() {
        entries.push((
            "properties".to_string(),
            Yaml::Map(
                fields
                    .iter()
                    .map(|f| (f.key.clone(), field_input(f)))
                    .collect(),
            ),
        ));
    }
    Yaml::Map(entries)
}

fn field_input(field: &Field) -> Yaml {
    if field.repeated {
        Yaml::Map(vec![
            ("type".to_string(), Yaml::Scalar("array".into())),
            ("items".to_string(), shape_input(&field.shape)),
        ])
    } else {
        shape_input(&field.shape)
    }
}

fn shape_input(shape: &Shape) -> Yaml {
    if let Some(item) = shape.array_item() {
        return Yaml::Map(vec![
            ("type".to_string(), Yaml::Scalar("array".into())),
            ("items".to_string(), shape_input(&item.shape)),
        ]);
    }
    match shape {
        Shape::Scalar(s) => scalar_schema(*s, false, true),
        Shape::Complex(fields) => object_input(fields),
        Shape::Any => Yaml::Map(Vec::new()),
    }
}

fn scalar_schema(s: Scalar, nullable: bool, with_format: bool) -> Yaml {
    let (kind, format) = match s {
        Scalar::String => ("string", None),
        Scalar::Integer => ("integer", None),
        Scalar::Number => ("number", None),
        Scalar::Boolean => ("boolean", None),
        Scalar::Date => ("string", Some("date")),
        Scalar::DateTime => ("string", Some("date-time")),
    };
    let mut entries = vec![(
        "type".to_string(),
        if nullable {
            Yaml::Flow(vec![kind.to_string(), "\"null\"".to_string()])
        } else {
            Yaml::Scalar(kind.to_string())
        },
    )];
    if let (Some(format), true) = (format, with_format) {
        entries.push(("format".to_string(), Yaml::Scalar(format.to_string())));
    }
    Yaml::Map(entries)
}

// The output: a mapping from result fields to pointers into the body, and its schema.

fn output_mapping(body: &Body) -> (Yaml, Vec<(String, Yaml)>) {
    // (result key, pointer, field) for every result field.
    let mut picks: Vec<(String, String, Field)> = Vec::new();
    let pointer_step = |name: &str| name.replace('~', "~0").replace('/', "~1");
    match &body.wrapper {
        Some((_, wrapper)) => {
            for part in &body.parts {
                picks.push((
                    part.key.clone(),
                    format!("/{}/{}", pointer_step(wrapper), pointer_step(&part.name)),
                    part.clone(),
                ));
            }
        }
        None => match body.parts.as_slice() {
            [part]
                if matches!(part.shape, Shape::Complex(_)) && part.shape.array_item().is_none() =>
            {
                let mut base = format!("/{}", pointer_step(&part.name));
                let mut fields = match &part.shape {
                    Shape::Complex(fields) => fields.clone(),
                    _ => Vec::new(),
                };
                // A response holding one complex result (`<R><Result>...</Result></R>`): its
                // fields are the result's.
                if let [only] = fields.as_slice()
                    && !only.repeated
                    && only.shape.array_item().is_none()
                    && let Shape::Complex(inner) = &only.shape
                    && !inner.is_empty()
                {
                    base = format!("{base}/{}", pointer_step(&only.name));
                    fields = inner.clone();
                }
                for field in fields {
                    picks.push((
                        field.key.clone(),
                        format!("{base}/{}", pointer_step(&field.name)),
                        field,
                    ));
                }
            }
            parts => {
                for part in parts {
                    picks.push((
                        part.key.clone(),
                        format!("/{}", pointer_step(&part.name)),
                        part.clone(),
                    ));
                }
            }
        },
    }
    let mut map = Vec::new();
    let mut properties = Vec::new();
    for (key, pointer, field) in picks {
        // An array type's items are read straight from under it.
        let (pointer, schema) = match field.shape.array_item() {
            Some(item) if !field.repeated => (
                format!("{pointer}/{}", pointer_step(&item.name)),
                output_field(&Field {
                    repeated: true,
                    ..item.clone()
                }),
            ),
            _ => (pointer, output_field(&field)),
        };
        map.push((key.clone(), Yaml::Scalar(scalar(&pointer))));
        properties.push((key, schema));
    }
    let mut schema = vec![("type".to_string(), Yaml::Scalar("object".into()))];
    if !properties.is_empty() {
        schema.push(("properties".to_string(), Yaml::Map(properties)));
    }
    (Yaml::Map(schema), map)
}

/// The schema of a result field, in the shape the answer's XML has as JSON; every value may
/// be null (an element left out or `xsi:nil`).
fn output_field(field: &Field) -> Yaml {
    if field.repeated {
        Yaml::Map(vec![
            (
                "type".to_string(),
                Yaml::Flow(vec!["array".into(), "\"null\"".into()]),
            ),
            ("items".to_string(), output_shape(&field.shape)),
        ])
    } else {
        output_shape(&field.shape)
    }
}

fn output_shape(shape: &Shape) -> Yaml {
    match shape {
        Shape::Scalar(s) => scalar_schema(*s, true, false),
        Shape::Any => Yaml::Map(Vec::new()),
        Shape::Complex(fields) => {
            let mut entries = vec![(
                "type".to_string(),
                Yaml::Flow(vec!["object".into(), "\"null\"".into()]),
            )];
            if !fields.is_empty() {
                entries.push((
                    "properties".to_string(),
                    Yaml::Map(
                        fields
                            .iter()
                            .map(|f| (f.name.clone(), output_field(f)))
                            .collect(),
                    ),
                ));
            }
            Yaml::Map(entries)
        }
    }
}

#[cfg(test)]
mod tests;
