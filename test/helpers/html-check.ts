/**
 * A strict HTML well-formedness check for pages we generate: a doctype, every '<' starts a tag, a comment or
 * nothing else, every non-void element is closed in order (no implied end tags), attributes are quoted and
 * not repeated, every '&' starts a character reference, ids are unique. Returns the problems found.
 */
const VOID = new Set(['area', 'base', 'br', 'col', 'embed', 'hr', 'img', 'input', 'link', 'meta', 'source', 'track', 'wbr']);
const RAW = new Set(['style', 'script', 'title', 'textarea']);
const TAG = /<(\/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s+[a-zA-Z_:][-a-zA-Z0-9_:.]*(?:\s*=\s*(?:"[^"<]*"|'[^'<]*'))?)*)\s*(\/?)>/y;
const ATTR = /\s+([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'))?/g;
const ENTITY = /&(#[0-9]+|#x[0-9a-fA-F]+|[a-zA-Z][a-zA-Z0-9]*);/y;

export interface HtmlCheck {
  errors: string[];
  /** Every element met, with its attributes, in document order. */
  elements: { name: string; attrs: Record<string, string> }[];
  /** Text content outside tags, entities decoded only for &lt; &gt; &amp; &quot; &#39;. */
  text: string;
}

export function checkHtml(html: string): HtmlCheck {
  const errors: string[] = [];
  const elements: HtmlCheck['elements'] = [];
  const stack: { name: string; at: number }[] = [];
  const ids = new Set<string>();
  let text = '';
  const line = (i: number) => html.slice(0, i).split('\n').length;
  if (!/^<!DOCTYPE html>/i.test(html)) errors.push('no <!DOCTYPE html> at the start');
  let i = html.indexOf('>') + 1;
  let inSvg = 0;
  while (i < html.length) {
    const c = html[i]!;
    if (c === '&') {
      ENTITY.lastIndex = i;
      const m = ENTITY.exec(html);
      if (!m) errors.push(`line ${line(i)}: bare '&'`);
      else text += ({ lt: '<', gt: '>', amp: '&', quot: '"', '#39': "'" } as Record<string, string>)[m[1]!] ?? m[0];
      i = m ? ENTITY.lastIndex : i + 1;
      continue;
    }
    if (c === '>') errors.push(`line ${line(i)}: stray '>'`);
    if (c !== '<') {
      text += c;
      i++;
      continue;
    }
    if (html.startsWith('<!--', i)) {
      const end = html.indexOf('-->', i + 4);
      if (end < 0) {
        errors.push(`line ${line(i)}: unterminated comment`);
        break;
      }
      i = end + 3;
      continue;
    }
    TAG.lastIndex = i;
    const m = TAG.exec(html);
    if (!m) {
      errors.push(`line ${line(i)}: '<' that starts no tag: ${JSON.stringify(html.slice(i, i + 30))}`);
      i++;
      continue;
    }
    const [, close, rawName, attrText, selfClose] = m;
    const name = rawName!.toLowerCase();
    i = TAG.lastIndex;
    if (close) {
      const top = stack.pop();
      if (!top || top.name !== name) errors.push(`line ${line(i)}: </${name}> closes ${top ? `<${top.name}> from line ${line(top.at)}` : 'nothing'}`);
      if (name === 'svg') inSvg--;
      continue;
    }
    const attrs: Record<string, string> = {};
    for (const a of attrText!.matchAll(ATTR)) {
      const key = a[1]!.toLowerCase();
      if (key in attrs) errors.push(`line ${line(i)}: attribute ${key} repeated on <${name}>`);
      if (a[2] === undefined && a[3] === undefined && a[0].includes('=')) errors.push(`line ${line(i)}: unquoted attribute ${key}`);
      attrs[key] = a[2] ?? a[3] ?? '';
      if (/&(?!(#[0-9]+|#x[0-9a-fA-F]+|[a-zA-Z][a-zA-Z0-9]*);)/.test(attrs[key]!)) errors.push(`line ${line(i)}: bare '&' in attribute ${key}`);
    }
    if (attrs.id !== undefined) {
      if (ids.has(attrs.id)) errors.push(`line ${line(i)}: duplicate id ${attrs.id}`);
      ids.add(attrs.id);
    }
    elements.push({ name, attrs });
    if (VOID.has(name)) continue;
    if (selfClose) {
      if (inSvg === 0) errors.push(`line ${line(i)}: self-closing <${name}/> outside SVG`);
      continue;
    }
    if (RAW.has(name)) {
      const end = html.toLowerCase().indexOf(`</${name}>`, i);
      if (end < 0) {
        errors.push(`line ${line(i)}: <${name}> never closed`);
        break;
      }
      if (name === 'title') text += html.slice(i, end);
      i = end + name.length + 3;
      continue;
    }
    if (name === 'svg') inSvg++;
    stack.push({ name, at: i });
  }
  for (const s of stack) errors.push(`<${s.name}> from line ${line(s.at)} never closed`);
  return { errors, elements, text };
}
