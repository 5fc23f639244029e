// The merchant's page: logs in with the password grant, keeps the token in memory only, and
// shows the daily balance, totals, categories and statement of a period through the public API.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  // `negative`: a zero is never shown as -R$ 0,00.
  const brl = new Intl.NumberFormat('pt-BR', { style: 'currency', currency: 'BRL', signDisplay: 'negative' });
  const inteiro = new Intl.NumberFormat('pt-BR');
  const PAGE_SIZE = 20;
  const DAY_SECS = 86400;
  const FIELDS = ['tipo', 'valor', 'data', 'descricao', 'categoria'];
  const MAX_RANGE_DAYS = 366;

  // The session: the token lives here and nowhere else (no storage, no cookie). Every answer is
  // checked against the session that asked, so a late answer never reaches another login.
  let session = null;
  let period = null;
  // Each read of the period and each statement page is numbered: only the latest is shown.
  let view = 0;
  let statementView = 0;
  let statement = { cursors: [null], index: 0 };
  let chart = null;
  let reversing = null;
  // The entry sent and its Idempotency-Key, kept until it is accepted or refused: sending the
  // same entry again after a lost answer is the same entry; a changed one is a new entry.
  let pendingEntry = null;

  // --- Formatting: amounts travel as decimal strings with two places, dates as YYYY-MM-DD. ---

  // Exact: the decimal string is formatted as it is, and sums are taken in whole cents.
  const money = (valor) => brl.format(valor);
  const cents = (valor) => BigInt(valor.replace('.', ''));
  const fromCents = (c) => {
    const abs = c < 0n ? -c : c;
    return `${c < 0n ? '-' : ''}${abs / 100n}.${String(abs % 100n).padStart(2, '0')}`;
  };
  const dateBR = (iso) => `${iso.slice(8, 10)}/${iso.slice(5, 7)}/${iso.slice(0, 4)}`;
  const pad = (n) => String(n).padStart(2, '0');
  const isoOf = (date) => `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
  const epochOf = (iso) => Date.UTC(+iso.slice(0, 4), +iso.slice(5, 7) - 1, +iso.slice(8, 10)) / 1000;
  const isoOfEpoch = (secs) => new Date(secs * 1000).toISOString().slice(0, 10);
  const tipoBR = (tipo) => (tipo === 'credito' ? 'Crédito' : 'Débito');
  const MONTHS = ['jan', 'fev', 'mar', 'abr', 'mai', 'jun', 'jul', 'ago', 'set', 'out', 'nov', 'dez'];

  // A typed amount in the API's form: "1.234,56" (pt-BR) or "1234.56". Whatever else is typed
  // goes as it is, and the API says what is wrong with it.
  const apiAmount = (typed) => {
    const t = typed.trim().replace(/^R\$\s*/, '');
    return t.includes(',') ? t.replace(/\./g, '').replace(',', '.') : t;
  };

  const randomKey = () => {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return 'pagina-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  };

  // --- Talking to the API. ---

  // A failed call: `status` 0 when no answer came; `ended` when the session that asked is over,
  // and nothing about it may be shown any more.
  class ApiError extends Error {
    constructor(status, problem, ended = false) {
      super((problem && (problem.detail || problem.title || problem.error_description))
        || (status ? `HTTP ${status}` : 'o serviço não respondeu'));
      this.status = status;
      this.problem = problem || {};
      this.ended = ended;
    }
  }
  const sessionEnded = () => new ApiError(0, null, true);

  // A call with the session's token, read whole (JSON, or a Blob with `blob`). A 401 ends the
  // session; an answer that comes after its session ended is dropped.
  async function api(path, { method = 'GET', body, headers = {}, blob = false } = {}) {
    const asking = session;
    if (!asking) throw sessionEnded();
    const init = { method, headers: { authorization: `Bearer ${asking.token}`, ...headers } };
    if (body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
    }
    let response;
    let result;
    try {
      response = await fetch(path, init);
      if (response.ok) {
        result = blob
          ? { blob: await response.blob(), name: response.headers.get('content-disposition') }
          : { body: await response.json(), stale: response.headers.get('x-cashflow-stale') === 'true' };
      }
    } catch {
      if (asking !== session) throw sessionEnded();
      throw new ApiError(0, null);
    }
    if (asking !== session) throw sessionEnded();
    if (response.status === 401) {
      logout('Sua sessão expirou. Entre novamente.');
      throw sessionEnded();
    }
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    return result;
  }

  // --- Login and logout. ---

  async function login(event) {
    event.preventDefault();
    const button = $('form-entrar').querySelector('button');
    if (session || button.disabled) return;
    const error = $('erro-entrar');
    error.textContent = '';
    button.disabled = true;
    const response = await fetch('/auth/token', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ grant_type: 'password', username: $('username').value, password: $('password').value }),
    }).catch(() => null);
    const answer = response && (await response.json().catch(() => null));
    button.disabled = false;
    if (!response || !response.ok || !answer) {
      error.textContent = response && response.status === 429
        ? 'Muitas tentativas. Aguarde um pouco e tente de novo.'
        : response && response.status < 500 ? 'Usuário ou senha incorretos.' : 'O serviço não respondeu. Tente de novo.';
      return;
    }
    $('password').value = '';
    const claims = JSON.parse(atob(answer.access_token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
    session = { token: answer.access_token, merchant: claims.merchant_id };
    session.timer = setTimeout(() => logout('Sua sessão expirou. Entre novamente.'), answer.expires_in * 1000);
    $('comerciante').textContent = `Comerciante: ${session.merchant}`;
    $('entrar').hidden = true;
    $('sessao').hidden = false;
    $('painel').hidden = false;
    note('');
    const today = new Date();
    $('ate').value = isoOf(today);
    $('de').value = isoOf(new Date(today.getFullYear(), today.getMonth(), today.getDate() - 29));
    $('data').value = isoOf(today);
    period = { de: $('de').value, ate: $('ate').value };
    $('conteudo').focus();
    await refresh();
  }

  // Forgets the token and everything shown with it.
  function logout(message) {
    if (session) clearTimeout(session.timer);
    session = null;
    period = null;
    pendingEntry = null;
    reversing = null;
    view += 1;
    statementView += 1;
    statement = { cursors: [null], index: 0 };
    if (chart) chart.destroy();
    chart = null;
    delete $('grafico-saldo').uplot;
    $('grafico-saldo').setAttribute('aria-label', 'Gráfico do saldo diário');
    for (const id of ['tabela-dias', 'tabela-mensal', 'tabela-categorias', 'tabela-extrato']) {
      $(id).tBodies[0].replaceChildren();
    }
    for (const id of ['total-creditos', 'total-debitos', 'total-saldo', 'total-saldo-final', 'total-lancamentos',
      'comerciante', 'ano', 'pagina', 'estorno-resumo', 'erro-estorno', 'erro-periodo']) {
      $(id).textContent = '';
    }
    for (const form of ['form-lancamento', 'form-periodo', 'form-entrar']) $(form).reset();
    clearFieldErrors();
    if ($('confirmar-estorno').open) $('confirmar-estorno').close();
    $('painel').hidden = true;
    $('sessao').hidden = true;
    $('entrar').hidden = false;
    note(message);
    $('username').focus();
  }

  function note(message) {
    $('aviso').textContent = message;
  }

  // The page is busy (`aria-busy` on the panel) from a user's action until its answers are shown.
  let pending = 0;
  async function busy(work) {
    pending += 1;
    $('painel').setAttribute('aria-busy', 'true');
    try {
      return await work();
    } finally {
      pending -= 1;
      if (!pending) $('painel').removeAttribute('aria-busy');
    }
  }

  // --- The period: balances, totals, the month summary, categories and the statement. ---

  // Reads everything for the period. With `aguardar` (a posicao from a 202) the daily balances
  // wait until consolidation has passed it, so what follows includes that entry.
  async function refresh(aguardar) {
    const asked = ++view;
    const { de, ate } = period;
    const range = new URLSearchParams({ de, ate });
    const daily = await api(`/v1/consolidado/diario?${range}${aguardar ? `&aguardar=${encodeURIComponent(aguardar)}` : ''}`);
    const [monthly, categories] = await Promise.all([
      api(`/v1/consolidado/mensal?ano=${ate.slice(0, 4)}`),
      api(`/v1/consolidado/categorias?${range}`),
    ]);
    if (asked !== view) return;
    showDays(daily.body.dias);
    showMonths(monthly.body);
    showCategories(categories.body.categorias);
    await showStatementPage(0, [null]);
    if (daily.stale) note('Ainda consolidando: os saldos podem não incluir o último lançamento. Atualize em instantes.');
  }

  function row(cells, header) {
    const tr = document.createElement('tr');
    cells.forEach((cell, i) => {
      const td = document.createElement(i === 0 && header ? 'th' : 'td');
      if (i === 0 && header) td.scope = 'row';
      if (cell instanceof Node) td.append(cell);
      else td.textContent = cell;
      tr.append(td);
    });
    return tr;
  }

  function showDays(days) {
    const sum = (field) => days.reduce((total, d) => total + cents(d[field]), 0n);
    const credits = sum('creditos');
    const debits = sum('debitos');
    $('total-creditos').textContent = money(fromCents(credits));
    $('total-debitos').textContent = money(fromCents(debits));
    $('total-saldo').textContent = money(fromCents(credits - debits));
    $('total-saldo-final').textContent = days.length ? money(days[days.length - 1].saldo_final) : '';
    $('total-lancamentos').textContent = inteiro.format(days.reduce((n, d) => n + d.lancamentos, 0));
    $('tabela-dias').tBodies[0].replaceChildren(...days.map((d) => {
      const tr = row([dateBR(d.data), money(d.creditos), money(d.debitos), money(d.saldo_final),
        inteiro.format(d.lancamentos), d.projetado ? 'projetado' : 'consolidado'], true);
      tr.dataset.data = d.data;
      if (d.projetado) tr.className = 'projetado';
      return tr;
    }));
    drawChart(days);
  }

  // The chart's data, one point per day: [day (epoch secs), credits, -debits, closing balance],
  // in reais. The instance is left on its element as `uplot`, for the console and the tests.
  function drawChart(days) {
    const element = $('grafico-saldo');
    const data = [
      days.map((d) => epochOf(d.data)),
      days.map((d) => Number(d.creditos)),
      days.map((d) => -Number(d.debitos)),
      days.map((d) => Number(d.saldo_final)),
    ];
    const firstProjected = days.findIndex((d) => d.projetado);
    const last = days.length ? days[days.length - 1] : null;
    const label = last
      ? `Saldo diário de ${dateBR(days[0].data)} a ${dateBR(last.data)}; saldo final ${money(last.saldo_final)}.`
      : 'Saldo diário';
    element.setAttribute('aria-label', label);
    if (chart) chart.destroy();
    const reais = (u, value) => (value == null ? '—' : brl.format(value));
    const bars = uPlot.paths.bars({ size: [0.6, 48] });
    chart = new uPlot({
      width: Math.max(element.clientWidth, 320),
      height: 320,
      tzDate: (secs) => uPlot.tzDate(new Date(secs * 1000), 'Etc/UTC'),
      scales: { x: { time: true, range: (u, min, max) => [min - DAY_SECS / 2, max + DAY_SECS / 2] } },
      series: [
        { label: 'Dia', value: (u, secs) => (secs == null ? '—' : dateBR(isoOfEpoch(secs))) },
        // Bars without an outline: a day without credits or debits draws nothing.
        { label: 'Créditos', stroke: 'transparent', fill: 'rgba(26,127,55,0.7)', paths: bars, points: { show: false }, value: reais },
        { label: 'Débitos', stroke: 'transparent', fill: 'rgba(179,38,30,0.7)', paths: bars, points: { show: false }, value: reais },
        { label: 'Saldo final', stroke: '#0b3d91', width: 2, value: reais },
      ],
      axes: [
        { space: 60, values: (u, ticks) => ticks.map((t) => dateBR(isoOfEpoch(t)).slice(0, 5)) },
        { size: 90, values: (u, ticks) => ticks.map((t) => brl.format(t)) },
      ],
      hooks: {
        // Projected days (not consolidated yet) are shaded.
        drawClear: [(u) => {
          if (firstProjected < 0) return;
          const from = u.valToPos(data[0][firstProjected] - DAY_SECS / 2, 'x', true);
          const to = u.bbox.left + u.bbox.width;
          u.ctx.save();
          u.ctx.fillStyle = 'rgba(90,90,90,0.14)';
          u.ctx.fillRect(Math.max(from, u.bbox.left), u.bbox.top, to - Math.max(from, u.bbox.left), u.bbox.height);
          u.ctx.restore();
        }],
      },
    }, data, element);
    element.uplot = chart;
  }

  function showMonths(mensal) {
    $('ano').textContent = mensal.ano;
    $('tabela-mensal').tBodies[0].replaceChildren(...mensal.meses.map((m) => row([
      `${MONTHS[Number(m.mes.slice(5, 7)) - 1]}/${m.mes.slice(0, 4)}`, money(m.creditos), money(m.debitos),
      money(m.saldo_do_mes), money(m.saldo_final), inteiro.format(m.lancamentos)], true)));
  }

  function showCategories(categories) {
    const rows = categories.map((c) => row([c.categoria ?? '(sem categoria)', money(c.creditos), money(c.debitos),
      money(c.saldo), inteiro.format(c.lancamentos)], true));
    if (!rows.length) rows.push(row(['Nenhum lançamento no período.']));
    $('tabela-categorias').tBodies[0].replaceChildren(...rows);
  }

  // --- The statement: pages of PAGE_SIZE, walked with the API's cursors. ---

  // Page `index`, whose cursor is `cursors[index]`; shown only if no later page was asked for.
  async function showStatementPage(index, cursors) {
    const asked = ++statementView;
    const { de, ate } = period;
    const query = new URLSearchParams({ de, ate, limite: String(PAGE_SIZE) });
    if (cursors[index]) query.set('cursor', cursors[index]);
    const { body } = await api(`/v1/lancamentos?${query}`);
    if (asked !== statementView) return;
    statement = { index, cursors: [...cursors.slice(0, index + 1), body.proximo_cursor] };
    const rows = body.lancamentos.map((l) => {
      const tr = row([dateBR(l.data), tipoBR(l.tipo), money(l.valor), l.descricao, l.categoria ?? '', l.id.slice(0, 8),
        statementAction(l)]);
      tr.dataset.id = l.id;
      return tr;
    });
    if (!rows.length) rows.push(row(['Nenhum lançamento no período.']));
    $('tabela-extrato').tBodies[0].replaceChildren(...rows);
    $('pagina').textContent = `Página ${index + 1}`;
    $('pagina-anterior').disabled = index === 0;
    $('pagina-seguinte').disabled = !body.proximo_cursor;
  }

  function statementAction(line) {
    if (line.estorno_de) return `estorno de ${line.estorno_de.slice(0, 8)}`;
    if (line.estornado_por) return 'estornado';
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'estornar';
    button.textContent = 'Estornar';
    button.setAttribute('aria-label', `Estornar ${line.descricao}, ${money(line.valor)} em ${dateBR(line.data)}`);
    button.addEventListener('click', () => askReversal(line));
    return button;
  }

  async function turnPage(step) {
    const index = statement.index + step;
    if (index < 0 || !(index === 0 || statement.cursors[index])) return;
    for (const id of ['pagina-anterior', 'pagina-seguinte']) $(id).disabled = true;
    try {
      await showStatementPage(index, statement.cursors);
    } catch (e) {
      failed(e);
      $('pagina-anterior').disabled = statement.index === 0;
      $('pagina-seguinte').disabled = !statement.cursors[statement.index + 1];
    }
    // Focus stays on a button that can still be used.
    const clicked = $(step > 0 ? 'pagina-seguinte' : 'pagina-anterior');
    const other = $(step > 0 ? 'pagina-anterior' : 'pagina-seguinte');
    if (clicked.disabled && !other.disabled) other.focus();
  }

  // The period's statement as the API's CSV, saved through the browser.
  async function downloadCsv() {
    const { de, ate } = period;
    const { merchant } = session;
    const { blob } = await api(`/v1/lancamentos?${new URLSearchParams({ de, ate })}`, { headers: { accept: 'text/csv' }, blob: true });
    const url = URL.createObjectURL(blob);
    const link = document.createElement('a');
    link.href = url;
    link.download = `extrato-${merchant}-${de}-${ate}.csv`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  // --- A new entry: the API checks every field, and each error is shown next to its field. ---

  function clearFieldErrors() {
    for (const field of FIELDS) $(`erro-${field}`).textContent = '';
    for (const input of $('form-lancamento').querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
    $('erro-lancamento').textContent = '';
  }

  async function postEntry(event) {
    event.preventDefault();
    clearFieldErrors();
    const form = $('form-lancamento');
    const entry = {
      tipo: form.elements.tipo.value,
      valor: apiAmount($('valor').value),
      data: $('data').value,
      descricao: $('descricao').value.trim(),
    };
    const categoria = $('categoria').value.trim();
    if (categoria) entry.categoria = categoria;
    const body = JSON.stringify(entry);
    if (!pendingEntry || pendingEntry.body !== body) pendingEntry = { key: randomKey(), body };
    const { key } = pendingEntry;
    let accepted;
    try {
      accepted = (await api('/v1/lancamentos', { method: 'POST', body, headers: { 'idempotency-key': key } })).body;
    } catch (e) {
      if (e.status >= 400 && e.status < 500) pendingEntry = null;
      return showEntryErrors(e);
    }
    pendingEntry = null;
    for (const id of ['valor', 'descricao', 'categoria']) $(id).value = '';
    note(`Lançamento de ${money(entry.valor)} registrado.`);
    await refresh(accepted.posicao).catch(failed);
  }

  function showEntryErrors(e) {
    if (e.ended) return;
    const errors = e.problem.errors || [];
    let first = null;
    for (const { field, message } of errors) {
      if (!FIELDS.includes(field)) {
        $('erro-lancamento').textContent += `${field ? `${field}: ` : ''}${message} `;
        continue;
      }
      $(`erro-${field}`).textContent = message;
      const input = field === 'tipo' ? $('form-lancamento').elements.tipo[0] : $(field);
      input.setAttribute('aria-invalid', 'true');
      first = first || input;
    }
    if (!errors.length) {
      const retry = e.status >= 500 || e.status === 0
        ? ' Envie de novo sem mudar nada: o lançamento não será contado duas vezes.' : '';
      $('erro-lancamento').textContent = `${e.message}.${retry}`;
    }
    if (first) first.focus();
  }

  // --- Reversal, after a confirmation. ---

  function askReversal(line) {
    reversing = line;
    $('estorno-resumo').textContent =
      `${tipoBR(line.tipo)} de ${money(line.valor)} em ${dateBR(line.data)}: ${line.descricao}`;
    // The original's day by default, so the reversal nets that day.
    $('estorno-data').value = line.data;
    $('erro-estorno').textContent = '';
    $('confirmar-estorno').showModal();
  }

  async function confirmReversal(event) {
    event.preventDefault();
    const line = reversing;
    if (!line) return;
    let accepted;
    try {
      accepted = (await api(`/v1/lancamentos/${encodeURIComponent(line.id)}/estorno`, {
        method: 'POST',
        body: { data: $('estorno-data').value },
      })).body;
    } catch (e) {
      if (e.ended) return;
      const errors = (e.problem.errors || []).map((x) => `${x.field}: ${x.message}`).join('; ');
      $('erro-estorno').textContent = errors || e.message;
      return;
    }
    $('confirmar-estorno').close();
    reversing = null;
    note(`Estorno de ${money(line.valor)} registrado.`);
    $('t-extrato').focus();
    await refresh(accepted.posicao).catch(failed);
  }

  // --- Wiring. ---

  function failed(e) {
    if (!e.ended) note(`Não foi possível carregar os dados: ${e.message}`);
  }

  function periodError(message) {
    $('erro-periodo').textContent = message;
    for (const id of ['de', 'ate']) {
      if (message) $(id).setAttribute('aria-invalid', 'true');
      else $(id).removeAttribute('aria-invalid');
    }
  }

  // A new period is kept only once the API has answered for it.
  async function changePeriod(event) {
    event.preventDefault();
    const de = $('de').value;
    const ate = $('ate').value;
    periodError('');
    if (!de || !ate || ate < de) return periodError('Escolha um período válido: "até" não pode vir antes de "de".');
    if ((epochOf(ate) - epochOf(de)) / DAY_SECS + 1 > MAX_RANGE_DAYS) {
      return periodError(`O período pode ter no máximo ${MAX_RANGE_DAYS} dias.`);
    }
    const previous = period;
    period = { de, ate };
    note('');
    try {
      await refresh();
    } catch (e) {
      period = previous;
      const errors = (e.problem.errors || []).map((x) => `${x.field}: ${x.message}`).join('; ');
      if (errors) periodError(errors);
      else failed(e);
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('form-entrar').addEventListener('submit', (e) => busy(() => login(e)).catch(failed));
    $('sair').addEventListener('click', () => logout('Você saiu.'));
    $('form-periodo').addEventListener('submit', (e) => busy(() => changePeriod(e)));
    $('form-lancamento').addEventListener('submit', (e) => busy(() => postEntry(e)));
    $('form-estorno').addEventListener('submit', (e) => busy(() => confirmReversal(e)));
    $('cancelar-estorno').addEventListener('click', () => $('confirmar-estorno').close());
    $('pagina-anterior').addEventListener('click', () => busy(() => turnPage(-1)));
    $('pagina-seguinte').addEventListener('click', () => busy(() => turnPage(1)));
    $('baixar-csv').addEventListener('click', () => busy(downloadCsv).catch(failed));
    window.addEventListener('resize', () => chart && chart.setSize({ width: Math.max($('grafico-saldo').clientWidth, 320), height: 320 }));
    $('username').focus();
  });
})();
