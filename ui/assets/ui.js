// genfleet's page script: refreshes the lists marked data-live by fetching
// their HTML again, and sends the submit form without leaving the page,
// showing the job's progress and image. The page works without it.
(function () {
  'use strict';
  var refresh = parseInt(document.body.getAttribute('data-refresh'), 10) || 3000;

  // live keeps el's content fresh from its data-live URL. A list that
  // holds the keyboard focus is not replaced until the focus leaves it,
  // and a job that ended (data-final="1") is no longer fetched.
  function live(el) {
    var every = parseInt(el.getAttribute('data-every'), 10) || refresh;
    var timer = null;
    function done() { return el.querySelector('[data-final="1"]') !== null; }
    function schedule() { if (!done()) { timer = setTimeout(tick, every); } }
    function tick() {
      if (document.hidden) { schedule(); return; }
      fetch(el.getAttribute('data-live'), { credentials: 'same-origin', headers: { 'Accept': 'text/html' } })
        .then(function (r) {
          if (r.status === 401) { location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html !== null && !el.contains(document.activeElement)) {
            el.innerHTML = html;
            el.setAttribute('data-updated', String(Date.now()));
          }
          schedule();
        })
        .catch(schedule);
    }
    el.liveRestart = function (url) {
      if (timer) { clearTimeout(timer); }
      el.setAttribute('data-live', url);
      tick();
    };
    schedule();
  }
  Array.prototype.forEach.call(document.querySelectorAll('[data-live]'), live);

  // The submit form: POST it with fetch, then follow the job in #result.
  var form = document.getElementById('submit-form');
  if (!form) { return; }
  var result = document.getElementById('result');
  var body = document.getElementById('result-body');
  var errorBox = document.getElementById('form-error');
  var button = document.getElementById('generate');

  function newNonce() {
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) { return ('0' + x.toString(16)).slice(-2); }).join('');
  }
  function clearErrors() {
    errorBox.hidden = true;
    errorBox.textContent = '';
    Array.prototype.forEach.call(form.querySelectorAll('[aria-invalid]'), function (f) {
      f.removeAttribute('aria-invalid');
      f.removeAttribute('aria-describedby');
    });
  }
  function showError(msg, field) {
    errorBox.textContent = msg;
    errorBox.hidden = false;
    var f = field && form.elements[field];
    if (f && f.focus) {
      f.setAttribute('aria-invalid', 'true');
      f.setAttribute('aria-describedby', 'form-error');
      f.focus();
    }
  }

  form.addEventListener('submit', function (ev) {
    ev.preventDefault();
    clearErrors();
    button.disabled = true;
    var data = new URLSearchParams(new FormData(form));
    fetch(form.action, {
      method: 'POST', credentials: 'same-origin', body: data,
      headers: { 'Accept': 'application/json', 'Content-Type': 'application/x-www-form-urlencoded' }
    })
      .then(function (r) {
        if (r.status === 401 || r.redirected) { location.reload(); return null; }
        return r.json().then(function (j) { return { ok: r.ok, body: j }; });
      })
      .then(function (res) {
        button.disabled = false;
        if (!res) { return; }
        if (!res.ok) { showError(res.body.error || 'The job was not accepted.', res.body.field); return; }
        // The next submit is a new job.
        form.elements.nonce.value = newNonce();
        var part = '/ui/part/jobs/' + encodeURIComponent(res.body.id) + '?compact=1';
        body.innerHTML = '<p class="statusline" role="status">queued</p>';
        result.hidden = false;
        if (!body.liveRestart) {
          body.setAttribute('data-every', '700');
          body.setAttribute('data-live', part);
          live(body);
        }
        body.liveRestart(part);
      })
      .catch(function () {
        button.disabled = false;
        showError('The scheduler could not be reached. Try again.');
      });
  });
})();
