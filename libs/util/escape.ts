/**
 * Text from users (prompts, model names, config values) put into HTML or Markdown: it must never become markup.
 * The routing page and the model card share these, so a prompt shows as written wherever it appears.
 */

/** Text and attribute values in HTML. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/**
 * Inline Markdown text, in a table cell or a list item, as the Hub renders it (HTML allowed): `&`, `<`, `>` as
 * entities (no tag, no entity of the user's), `\`, `|`, backticks and brackets backslash-escaped (no code span
 * closing early, no cell split, no link or image), line breaks flattened (no new block). Other text is unchanged.
 */
export function markdownText(s: string): string {
  return s
    .replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]!)
    .replace(/[\\|`[\]]/g, (c) => `\\${c}`)
    .replace(/\r\n|[\r\n\u2028\u2029]/g, ' ');
}

/** A Markdown code span around any text: a delimiter longer than any backtick run in it, one line. */
export function markdownCode(s: string): string {
  const flat = s.replace(/\r\n|[\r\n\u2028\u2029]/g, ' ');
  const tick = '`'.repeat(Math.max(0, ...(flat.match(/`+/g) ?? []).map((m) => m.length)) + 1);
  const pad = flat.startsWith('`') || flat.endsWith('`') ? ' ' : '';
  return `${tick}${pad}${flat}${pad}${tick}`;
}
