/* A small Markdown renderer for model answers: no dependencies, no build step.
 *
 * Safety rule: every piece of user or model text passes through escapeHtml
 * before it reaches the output; the only tags in the result are the ones built
 * here, and link targets are limited to http(s) URLs. Unclosed code fences
 * render as code, so a streaming answer looks right while it grows.
 */
(function (global) {
  "use strict";

  function escapeHtml(text) {
    return text
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  // Code spans and links are cut out first and stored as placeholders, so the
  // emphasis rules below never rewrite their contents (or a link's URL).
  function inline(raw) {
    const saved = [];
    const keep = (html) => "\u0000" + (saved.push(html) - 1) + "\u0000";
    let text = raw.replace(/\u0000/g, "");
    text = text.replace(/`([^`\n]+)`/g, (_, code) => keep("<code>" + escapeHtml(code) + "</code>"));
    text = text.replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g, (_, label, url) =>
      keep('<a href="' + escapeHtml(url) + '" target="_blank" rel="noopener noreferrer">' +
        escapeHtml(label) + "</a>"));
    let html = escapeHtml(text);
    html = html.replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>");
    html = html.replace(/__(?=\S)([\s\S]*?\S)__/g, "<strong>$1</strong>");
    html = html.replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
    html = html.replace(/(^|[^*\w])\*(?=[^\s*])([^*\n]*?[^\s*])?\*(?!\*)/g,
      (m, pre, body) => (body === undefined ? m : pre + "<em>" + body + "</em>"));
    html = html.replace(/(^|[^_\w])_(?=\S)([^_\n]*?\S)_(?![\w_])/g, "$1<em>$2</em>");
    return html.replace(/\u0000(\d+)\u0000/g, (_, i) => saved[Number(i)]);
  }

  const FENCE = /^\s{0,3}(```+|~~~+)\s*([\w+#.-]*)[^\n]*$/;
  const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
  const BULLET = /^\s*[-*+]\s+(.*)$/;
  const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
  const QUOTE = /^\s{0,3}>\s?(.*)$/;

  function isBlockStart(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) ||
      BULLET.test(line) || NUMBERED.test(line) || QUOTE.test(line);
  }

  function render(source) {
    const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      let m;
      if ((m = FENCE.exec(line))) {
        const close = m[1];
        const body = [];
        i++;
        while (i < lines.length && !lines[i].trim().startsWith(close)) body.push(lines[i++]);
        i++; // the closing fence (or past the end, while an answer is still streaming)
        const lang = m[2] ? ' class="language-' + escapeHtml(m[2]) + '"' : "";
        out.push("<pre><code" + lang + ">" + escapeHtml(body.join("\n")) + "</code></pre>");
      } else if ((m = HEADING.exec(line))) {
        const level = m[1].length;
        out.push("<h" + level + ">" + inline(m[2]) + "</h" + level + ">");
        i++;
      } else if (RULE.test(line)) {
        out.push("<hr>");
        i++;
      } else if (QUOTE.test(line)) {
        const body = [];
        while (i < lines.length && (m = QUOTE.exec(lines[i]))) { body.push(m[1]); i++; }
        out.push("<blockquote>" + render(body.join("\n")) + "</blockquote>");
      } else if (BULLET.test(line) || NUMBERED.test(line)) {
        const ordered = !BULLET.test(line);
        const pattern = ordered ? NUMBERED : BULLET;
        const items = [];
        while (i < lines.length && (m = pattern.exec(lines[i]))) {
          items.push("<li>" + inline(ordered ? m[2] : m[1]) + "</li>");
          i++;
        }
        const start = ordered ? Number(NUMBERED.exec(line)[1]) : 1;
        const tag = ordered ? (start !== 1 ? '<ol start="' + start + '">' : "<ol>") : "<ul>";
        out.push(tag + items.join("") + (ordered ? "</ol>" : "</ul>"));
      } else if (line.trim() === "") {
        i++;
      } else {
        const body = [];
        while (i < lines.length && lines[i].trim() !== "" && !isBlockStart(lines[i])) {
          body.push(lines[i++]);
        }
        out.push("<p>" + body.map(inline).join("<br>") + "</p>");
      }
    }
    return out.join("\n");
  }

  global.corralMarkdown = { render: render, escapeHtml: escapeHtml };
})(window);
