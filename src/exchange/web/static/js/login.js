import { api, busy, showMessage, ROOT } from './api.js';
import { setLoggedIn } from './nav.js';

const form = document.getElementById('login-form');
const email = document.getElementById('login-email');
const password = document.getElementById('login-password');
const remembered = sessionStorage.getItem('register-email');
if (remembered && !email.value) email.value = remembered;

// Only a page of this site: the target is resolved the way the browser will follow
// it ("/\t/evil.example" is "//evil.example" to a URL parser), and kept only if it
// stays on this origin.
function target() {
  try {
    const url = new URL(form.dataset.next || '/account', location.origin);
    if (url.origin === location.origin) return url.pathname + url.search + url.hash;
  } catch (_) { /* not a URL at all */ }
  return '/account';
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
    const next = target();
    location.href = new URL(next.startsWith(ROOT) ? next : ROOT + next, location.origin).href;
  });
});
