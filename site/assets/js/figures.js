// Interactive figures: step through the frames the workflow wrote for a figure (figures/NAME/frame-K.png).
//
// The post marks an interactive figure's strip image with data attributes (templates/sections/macros.md.j2):
//   data-frames      the frames' URLs, space-separated, in order
//   data-labels      what each frame shows ("t = 500", "i_start = 7 (t = 780)", "upside down"), ";"-separated (a "|" would make kramdown read a table)
//   data-frame-size  the frames' width and height in pixels
//   data-control     "range" (a slider) or "toggle" (a button that turns an anagram to its next view)
//   data-name        what the control sets ("t", "i_start", "denoising step", "view")
// Below the strip this adds the current frame, enlarged, and the control: a real <input type=range> or
// <button>, so the keyboard works (arrow keys, Home/End; Enter/Space), with the current value in an <output>.
// Without JavaScript (or in a feed) the strip alone is the figure. No image is made here: only files are shown.
(function () {
  "use strict";

  function build(strip, index) {
    var urls = strip.getAttribute("data-frames").trim().split(/\s+/);
    var labels = strip.getAttribute("data-labels").split(";");
    var size = (strip.getAttribute("data-frame-size") || "").split(" ").map(Number);
    var kind = strip.getAttribute("data-control");
    var name = strip.getAttribute("data-name") || "frame";
    if (urls.length < 2 || labels.length !== urls.length) { return; }

    var box = document.createElement("div");
    box.className = "interactive interactive-" + kind;
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", "Step through the figure: " + (strip.getAttribute("alt") || name));

    var frame = document.createElement("img");
    // 64-px frames are enlarged with crisp pixels; larger ones (stage II) are shown at their own size.
    frame.className = "frame" + (size[0] > 1.5 * size[1] ? " wide" : size[1] >= 200 ? " full" : "");
    if (size[0] && size[1]) { frame.width = size[0]; frame.height = size[1]; }

    var output = document.createElement("output");
    output.id = "interactive-value-" + index;
    output.setAttribute("aria-live", "polite");

    var control, k = 0;
    function show(next) {
      k = next;
      frame.src = urls[k];
      frame.alt = (strip.getAttribute("alt") || "") + ": " + labels[k];
      output.textContent = labels[k];
      if (kind === "range") { control.setAttribute("aria-valuetext", labels[k]); }
      box.setAttribute("data-frame", String(k));
    }

    if (kind === "toggle") {
      control = document.createElement("button");
      control.type = "button";
      control.textContent = urls.length === 2 ? "Turn it over" : "Turn to the next view";
      control.setAttribute("aria-describedby", output.id);
      control.addEventListener("click", function () { show((k + 1) % urls.length); });
    } else {
      control = document.createElement("input");
      control.type = "range";
      control.min = "0";
      control.max = String(urls.length - 1);
      control.step = "1";
      control.value = "0";
      control.setAttribute("aria-label", name);
      control.addEventListener("input", function () { show(Number(control.value)); });
    }

    var bar = document.createElement("div");
    bar.className = "control";
    bar.appendChild(control);
    bar.appendChild(output);
    box.appendChild(frame);
    box.appendChild(bar);
    show(0);

    // After the strip's paragraph, before the caption.
    var anchor = strip.closest("p") || strip;
    anchor.parentNode.insertBefore(box, anchor.nextSibling);
  }

  function init() {
    var strips = document.querySelectorAll("img[data-frames]");
    for (var i = 0; i < strips.length; i++) { build(strips[i], i); }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
