// Report HTML comes from the server, but it quotes repository text and model output: keep
// only plain document markup. A <template> parses it inertly (no script runs, nothing
// loads); we copy across the allowed elements and attributes and drop everything else.

const ALLOWED = new Set([
  "a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "details", "div", "dl",
  "dt", "em", "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "ins",
  "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "section", "small", "span", "strong",
  "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
  "article", "header", "footer", "nav", "aside", "main", "time",
]);
// Whole subtrees to drop, text included.
const DROP = new Set(["script", "style", "template", "iframe", "object", "embed", "noscript", "svg", "math", "title", "head"]);
const ATTRS = new Set(["class", "id", "title", "colspan", "rowspan", "open", "datetime", "lang", "dir"]);

export function sanitize(html) {
  // Only the body: the head's own stylesheet is not ours to apply (and a strict CSP would
  // complain about it even in an inert document).
  const start = html.search(/<body[\s>]/i);
  const end = html.search(/<\/body>/i);
  if (start >= 0) html = html.slice(html.indexOf(">", start) + 1, end > start ? end : undefined);
  const template = document.createElement("template");
  template.innerHTML = html;
  const out = document.createDocumentFragment();
  copyChildren(template.content, out);
  return out;
}

function copyChildren(from, to) {
  for (const node of from.childNodes) {
    if (node.nodeType === Node.TEXT_NODE) {
      to.append(document.createTextNode(node.data));
    } else if (node.nodeType === Node.ELEMENT_NODE) {
      const tag = node.localName;
      if (DROP.has(tag)) continue;
      if (!ALLOWED.has(tag)) {
        copyChildren(node, to); // unwrap: keep the text, lose the element
        continue;
      }
      const el = document.createElement(tag);
      for (const attr of node.attributes) {
        const name = attr.name.toLowerCase();
        if (ATTRS.has(name)) el.setAttribute(name, attr.value);
        else if (name === "href" && tag === "a" && safeHref(attr.value)) el.setAttribute("href", attr.value);
      }
      if (tag === "a") {
        el.setAttribute("rel", "noopener noreferrer");
        el.setAttribute("target", "_blank");
      }
      copyChildren(node, el);
      to.append(el);
    }
  }
}

function safeHref(value) {
  const v = value.trim();
  if (v.startsWith("#")) return true;
  try {
    const u = new URL(v, location.href);
    return u.protocol === "https:" || u.protocol === "http:";
  } catch {
    return false;
  }
}
