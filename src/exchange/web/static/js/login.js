import { api, busy, showMessage, ROOT } from './api.js';
import { setLoggedIn } from './nav.js';

const form = document.getElementById('login-form');
const email = document.getElementById('login-email');
const password = document.getElementById('login-password');
const remembered = sessionStorage.getItem('register-email');
if (remembered && !email.value) email.value = remembered;

// Only a page of this site: the target is resolved the way the browser will follow
// it ("/\t/evil.example" and "/%2e//evil.example" are "//evil.example" to a URL
// parser), and kept only as an absolute URL on this origin whose path does not
// begin with "//" (which, written as a link, would name another host).
function onThisSite(path) {
  try {
    const url = new URL(path, location.origin);
    if (url.origin === location.origin && !url.pathname.startsWith('//')) return url;
  } catch (_) { /* not a URL at all */ }
  return null;
}

function target() {
  const next = form.dataset.next || '/account';
  const url = onThisSite(next.startsWith(ROOT) ? next : ROOT + next);
  return (url || new URL(ROOT + '/account', location.origin)).href;
}

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (!email.value.trim() || !password.value) {
    showMessage('Please enter your e-mail address and password.', 'error');
    return;
  }
  busy(document.getElementById('login-submit'), async () => {
    await api('login', { user: email.value.trim(), pass: password.value });
    sessionStorage.removeItem('register-email');
    setLoggedIn(true);
    showMessage('Logged in.', 'ok');
    location.href = target();
  });
});
