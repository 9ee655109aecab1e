import { api, busy, showMessage, ROOT } from './api.js';

const form = document.getElementById('register-form');
const email = document.getElementById('register-email');
const code = document.getElementById('register-code');
const password = document.getElementById('register-password');
const sendBtn = document.getElementById('send-code');

function cooldown(seconds) {
  const label = sendBtn.textContent;
  sendBtn.disabled = true;
  const tick = () => {
    if (seconds <= 0) {
      sendBtn.disabled = false;
      sendBtn.textContent = label;
      return;
    }
    sendBtn.textContent = `Resend in ${seconds--} s`;
    setTimeout(tick, 1000);
  };
  tick();
}

sendBtn.addEventListener('click', () => {
  if (!email.value.trim()) {
    showMessage('Please enter your e-mail address first.', 'error');
    return;
  }
  busy(sendBtn, async () => {
    const data = await api('make_valid_code', { user: email.value.trim() });
    const minutes = Math.round(((data && data.expires_in) || 600) / 60);
    showMessage(`We sent a code to ${email.value.trim()}. It is valid for ${minutes} minutes.`, 'ok');
    code.focus();
    return true;
  }).then((sent) => { if (sent) cooldown(60); });
});

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (!email.value.trim() || !code.value.trim() || !password.value) {
    showMessage('Please fill in e-mail, code and password.', 'error');
    return;
  }
  busy(document.getElementById('register-submit'), async () => {
    await api('regeist_user', { user: email.value.trim(), pass: password.value, valid_code: code.value.trim() });
    sessionStorage.setItem('register-email', email.value.trim());
    showMessage('Your account is ready. Taking you to the login page…', 'ok');
    setTimeout(() => { location.href = `${ROOT}/login`; }, 800);
  });
});
