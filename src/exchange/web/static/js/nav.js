// Login / Register / Logout links. The session cookie is HttpOnly, so the server tells
// the page whether a cookie was sent, and any 401 from the API switches to "logged out".
import { api, busy, ROOT } from './api.js';

const auth = document.getElementById('nav-auth');

export function setLoggedIn(yes) {
  if (auth) auth.dataset.loggedIn = yes ? 'yes' : 'no';
}

export function isLoggedIn() {
  return !!auth && auth.dataset.loggedIn === 'yes';
}

document.addEventListener('auth:out', () => setLoggedIn(false));

const logout = document.getElementById('logout');
if (logout) {
  logout.addEventListener('click', () => busy(logout, async () => {
    try {
      await api('logout');
    } catch (err) {
      if (err.code !== 'not_logged_in') throw err;
    }
    setLoggedIn(false);
    location.href = `${ROOT}/`;
  }));
}
