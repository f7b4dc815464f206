// Wharf's web UI: search as you type, live tag filter, copy buttons. No inline script anywhere
// (the Content-Security-Policy forbids it); the pages work without this file too.
"use strict";

(function () {
  function debounce(fn, ms) {
    var timer = null;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  // The repositories page: the list follows the search box and the order, fetched from the server.
  var form = document.getElementById("search-form");
  var list = document.getElementById("repository-list");
  if (form && list) {
    var search = document.getElementById("search");
    var sort = document.getElementById("sort");
    var latest = 0;
    var refresh = function () {
      var params = new URLSearchParams({ q: search.value, sort: sort.value });
      var ticket = ++latest;
      fetch(list.dataset.source + "?" + params.toString(), { credentials: "same-origin" })
        .then(function (response) { return response.text(); })
        .then(function (html) {
          if (ticket !== latest) { return; }  // an older answer arriving late
          var parsed = new DOMParser().parseFromString(html, "text/html");
          var fresh = parsed.body;
          list.replaceChildren.apply(list, Array.prototype.slice.call(fresh.childNodes));
          history.replaceState(null, "", "/?" + params.toString());
        });
    };
    search.addEventListener("input", debounce(refresh, 150));
    sort.addEventListener("change", refresh);
  }

  // The repository page: rows that do not contain the filter's text are hidden at once.
  var filter = document.getElementById("tag-filter");
  if (filter) {
    filter.addEventListener("input", function () {
      var text = filter.value.toLowerCase();
      document.querySelectorAll(filter.dataset.filter).forEach(function (row) {
        row.classList.toggle("hidden", row.dataset.text.indexOf(text) === -1);
      });
    });
  }

  // Copy buttons next to pull commands.
  document.querySelectorAll("button.copy").forEach(function (button) {
    button.addEventListener("click", function () {
      var done = function () { button.textContent = "Copied"; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(button.dataset.copy).then(done);
      } else {
        var area = document.createElement("textarea");
        area.value = button.dataset.copy;
        document.body.appendChild(area);
        area.select();
        document.execCommand("copy");
        area.remove();
        done();
      }
    });
  });
})();
