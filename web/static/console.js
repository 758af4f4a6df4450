// Live updates for the agentotp console. Every page works without this
// script: it only refreshes the part of the page marked id="live" when the
// server says a request appeared or ended, fetching the page like a reload
// would (so everything shown is escaped by the same templates).
(function () {
  'use strict';
  var body = document.body;
  var live = body.getAttribute('data-live');
  var events = body.getAttribute('data-events');
  if (!live || !events || !window.EventSource || !window.fetch || !window.DOMParser) {
    return;
  }
  var onRequest = live.indexOf('request:') === 0 ? live.slice('request:'.length) : '';
  var busy = false, again = false;

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
      .then(function (res) {
        if (res.redirected || !res.ok) {
          // Signed out, or the page is gone: let the browser show why.
          location.reload();
          return null;
        }
        return res.text();
      })
      .then(function (html) {
        if (!html) { return; }
        var next = new DOMParser().parseFromString(html, 'text/html').getElementById('live');
        var cur = document.getElementById('live');
        if (next && cur) {
          cur.replaceWith(document.importNode(next, true));
        }
      })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  function concerns(e) {
    // The pending list cares about every request; a request page only
    // about its own, and only once it ends (an editor stays untouched
    // while the request waits).
    if (!onRequest) { return true; }
    return e.type === 'changed' || (e.type === 'resolved' && e.data === onRequest);
  }

  var source = new EventSource(events);
  var opened = false;
  source.addEventListener('open', function () {
    if (opened) { refresh(); } // events may have been missed while reconnecting
    opened = true;
    body.setAttribute('data-live-state', 'open');
  });
  source.addEventListener('error', function () {
    body.setAttribute('data-live-state', 'reconnecting');
  });
  ['pending', 'resolved', 'changed'].forEach(function (type) {
    source.addEventListener(type, function (e) { if (concerns(e)) { refresh(); } });
  });
  if (!onRequest) {
    // Keeps "expires in" current and shows requests from other servers.
    setInterval(refresh, 30000);
  }
})();
