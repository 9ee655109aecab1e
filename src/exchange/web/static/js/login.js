import { api, busy, showMessage, ROOT } from './api.js';
import { setLoggedIn } from './nav.js';

const form = document.getElementById('login-form');
const email = document.getElementById('login-email');
const password = document.getElementById('login-password');
const remembered = sessionStorage.getItem('register-email');
if (remembered && !email.value) email.value = remembered;

function target() {
  const next = form.dataset.next || '/account';
  return next.startsWith('/') && !next.startsWith('//') ? next : '/account';
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
    location.href = next.startsWith(ROOT) ? next : ROOT + next;
  });
});
