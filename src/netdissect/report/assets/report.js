/* netdissect report: client-side cards, filters and pagination. No network, no libraries.
 * The page's data is embedded as JSON in <script id="nd-data" type="application/json">.
 * A small hook, window.ndReport, exposes the state (used by the tests). */
(function () {
  'use strict';

  var dataEl = document.getElementById('nd-data');
  var D = dataEl ? JSON.parse(dataEl.textContent) : { page: 'overview' };
  window.ndReport = { page: D.page, ready: false };

  function el(tag, attrs, children) {
    var n = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] === null || attrs[k] === undefined) continue;
        if (k === 'text') n.textContent = attrs[k];
        else if (k === 'cls') n.className = attrs[k];
        else if (k === 'style') n.setAttribute('style', attrs[k]);
        else n.setAttribute(k, attrs[k]);
      }
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      n.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return n;
  }

  function fmt(x, d) { return (x === null || x === undefined) ? 'n/a' : Number(x).toFixed(d === undefined ? 3 : d); }

  function slug(label, cat) {
    var s = (cat + '-' + label).replace(/[^A-Za-z0-9]+/g, '-').replace(/^-+|-+$/g, '').toLowerCase();
    return 'c-' + (s || 'x');
  }

  /* ------------------------------------------------------------------ layer page */
  function initLayer() {
    var units = D.units;
    var catInfo = {};
    D.categories.forEach(function (c) { catInfo[c.name] = c; });
    var imageLevel = {};
    (D.imageLevel || []).forEach(function (c) { imageLevel[c] = true; });
    var $ = function (id) { return document.getElementById(id); };
    var ctl = { cat: $('f-cat'), q: $('f-q'), min: $('f-min'), max: $('f-max'), det: $('f-det'),
      sort: $('f-sort'), per: $('f-per'), reset: $('f-reset') };
    var cardsEl = $('cards');
    var page = 0;
    var current = [];

    function catColor(c) { return catInfo[c] ? catInfo[c].color : '#9A9A9A'; }
    function catText(c) { return catInfo[c] ? catInfo[c].text : '#000'; }

    function readFilters() {
      var mn = parseFloat(ctl.min.value), mx = parseFloat(ctl.max.value);
      return { cat: ctl.cat.value, q: ctl.q.value.trim().toLowerCase(),
        min: isNaN(mn) ? null : mn, max: isNaN(mx) ? null : mx, det: ctl.det.checked,
        sort: ctl.sort.value, per: parseInt(ctl.per.value, 10) || 50 };
    }

    function matches(u, f) {
      if (f.cat && u.c !== f.cat) return false;
      if (f.det && !(u.i > D.thr)) return false;
      if (f.min !== null && !(u.i >= f.min)) return false;
      if (f.max !== null && !(u.i <= f.max)) return false;
      if (f.q) {
        var m = /^#?(\d+)$/.exec(f.q);
        if (m) { if (u.u !== parseInt(m[1], 10)) return false; }
        else if (f.q.charAt(0) === '=') { if (u.l.toLowerCase() !== f.q.slice(1)) return false; }
        else if (u.l.toLowerCase().indexOf(f.q) < 0) return false;
      }
      return true;
    }

    var sorters = {
      'iou-desc': function (a, b) { return (b.i || 0) - (a.i || 0) || a.u - b.u; },
      'iou-asc': function (a, b) { return (a.i || 0) - (b.i || 0) || a.u - b.u; },
      'unit': function (a, b) { return a.u - b.u; },
      'label': function (a, b) { return a.l.localeCompare(b.l) || (b.i || 0) - (a.i || 0) || a.u - b.u; },
      'cat': function (a, b) { return a.c.localeCompare(b.c) || (b.i || 0) - (a.i || 0) || a.u - b.u; }
    };

    function compute() {
      var f = readFilters();
      current = units.filter(function (u) { return matches(u, f); });
      current.sort(sorters[f.sort] || sorters['iou-desc']);
      return f;
    }

    function ioubar(u) {
      var scale = D.scale || 1;
      var w = Math.max(0, Math.min(100, 100 * (u.i || 0) / scale));
      var t = Math.max(0, Math.min(100, 100 * D.thr / scale));
      return el('div', { cls: 'ioubar', title: 'IoU ' + fmt(u.i) + '; detector threshold ' + D.thr }, [
        el('span', { cls: 'fill', style: 'width:' + w.toFixed(1) + '%;background:' + catColor(u.c) }),
        el('span', { cls: 'thr', style: 'left:calc(' + t.toFixed(1) + '% - 1px)' })
      ]);
    }

    function card(u) {
      var det = u.i > D.thr;
      var targeted = location.hash === '#unit-' + u.u;
      var info = el('div', { cls: 'info' }, [
        el('div', { cls: 'unitno' }, [el('a', { href: '#unit-' + u.u, text: 'unit ' + u.u })]),
        el('div', { cls: 'label' }, [u.l ? el('a', { href: 'concepts.html#' + slug(u.l, u.c), text: u.l,
          title: 'units detecting ' + u.l }) : '(none)']),
        el('span', { cls: 'cat', style: 'background:' + catColor(u.c) + ';color:' + catText(u.c), text: u.c || 'none' }),
        el('div', { cls: 'iouline' }, [
          el('span', {}, ['IoU ', el('span', { cls: 'iouval', text: fmt(u.i) })]),
          el('span', { cls: 'verdict ' + (det ? 'yes' : 'no'),
            text: det ? 'detector (> ' + D.thr + ')' : 'below ' + D.thr })
        ]),
        ioubar(u),
        el('div', { cls: 'ioubar-scale' }, [el('span', { text: '0' }), el('span', { text: String(D.scale) })])
      ]);
      if (imageLevel[u.c]) {
        info.appendChild(el('div', { cls: 'lvl', text: 'image-level label (' + u.c +
          '): no region outline; a dashed frame marks images that carry it' }));
      }
      if (u.r && u.r.length) {
        var r = el('div', { cls: 'runners', title: 'the next best concepts of this unit, with their IoU' }, ['runners-up: ']);
        u.r.forEach(function (x) {
          r.appendChild(el('span', { cls: 'r', title: x[1] }, [
            el('span', { cls: 'dot', style: 'background:' + catColor(x[1]) }), x[0] + ' ' + fmt(x[2])]));
        });
        info.appendChild(r);
      }
      if (u.t !== undefined && u.t !== null) {
        info.appendChild(el('div', { cls: 'thrval', text: 'threshold T = ' + Number(u.t).toPrecision(4),
          title: 'activation threshold of this unit (its top-quantile level over the dataset)' }));
      }
      var strip;
      if (u.s) {
        var img = el('img', { src: u.s, loading: 'lazy', decoding: 'async', width: u.w, height: u.h,
          alt: 'top ' + (u.x ? u.x.length : '') + ' images of unit ' + u.u + ' with its region highlighted' });
        strip = el('div', { cls: 'strip' }, [img]);
        if (u.x) {
          u.x.forEach(function (c, j) {
            var has = c[4] === true ? '; label present' : (c[4] === false ? '; label absent' : '');
            var frac = (c[5] === null || c[5] === undefined) ? '' : '; unit region ' + (100 * c[5]).toFixed(1) + '% of image';
            if (u.t !== undefined && u.t !== null && c[3] !== null && c[3] <= u.t) frac = '; never above the threshold here (no region)';
            strip.appendChild(el('span', { cls: 'cell',
              style: 'left:' + (100 * c[0] / u.w).toFixed(3) + '%;width:' + (100 * c[1] / u.w).toFixed(3) + '%',
              title: '#' + (j + 1) + ' ' + c[2] + '\nmax activation ' + fmt(c[3], 3) + frac + has }));
          });
        }
      } else {
        strip = el('div', { cls: 'strip' }, [el('div', { cls: 'nostrip', text: 'no image strip for this unit' })]);
      }
      return el('article', { cls: 'card ' + (det ? 'det' : 'nondet') + (targeted ? ' targeted' : ''), id: 'unit-' + u.u,
        'data-unit': u.u, 'data-cat': u.c }, [info, strip]);
    }

    function pager(container, pages) {
      container.textContent = '';
      if (pages <= 1) return;
      function btn(label, p, on) {
        var b = el('button', { type: 'button', text: label, 'aria-label': 'page ' + (p + 1) });
        if (on) b.className = 'on';
        if (p < 0 || p >= pages) b.disabled = true;
        b.addEventListener('click', function () { go(p, true); });
        return b;
      }
      container.appendChild(btn('\u2039', page - 1));
      var shown = {};
      [0, 1, page - 2, page - 1, page, page + 1, page + 2, pages - 2, pages - 1].forEach(function (p) {
        if (p >= 0 && p < pages) shown[p] = true;
      });
      var last = -1;
      Object.keys(shown).map(Number).sort(function (a, b) { return a - b; }).forEach(function (p) {
        if (last >= 0 && p > last + 1) container.appendChild(el('span', { cls: 'gap', text: '\u2026' }));
        container.appendChild(btn(String(p + 1), p, p === page));
        last = p;
      });
      container.appendChild(btn('\u203a', page + 1));
    }

    function render() {
      var f = readFilters();
      var pages = Math.max(1, Math.ceil(current.length / f.per));
      if (page >= pages) page = pages - 1;
      if (page < 0) page = 0;
      var slice = current.slice(page * f.per, (page + 1) * f.per);
      cardsEl.textContent = '';
      var frag = document.createDocumentFragment();
      slice.forEach(function (u) { frag.appendChild(card(u)); });
      if (!slice.length) frag.appendChild(el('div', { cls: 'empty', text: 'No unit matches these filters.' }));
      cardsEl.appendChild(frag);
      var from = current.length ? page * f.per + 1 : 0;
      $('count').textContent = (current.length === units.length ? units.length + ' units' :
        current.length + ' of ' + units.length + ' units match') +
        (current.length ? ' \u00b7 showing ' + from + '\u2013' + (page * f.per + slice.length) : '');
      pager($('pager-top'), pages);
      pager($('pager-bottom'), pages);
      var R = window.ndReport;
      R.matching = current.length;
      R.shown = slice.length;
      R.page = page;
      R.pages = pages;
      document.body.setAttribute('data-shown', String(slice.length));
      document.body.setAttribute('data-matching', String(current.length));
    }

    function go(p, scroll) {
      page = p;
      render();
      if (scroll) window.scrollTo(0, document.querySelector('.controls').offsetTop - 50);
    }

    function update() { compute(); page = 0; render(); }

    function resetControls() {
      ctl.cat.value = ''; ctl.q.value = ''; ctl.min.value = ''; ctl.max.value = '';
      ctl.det.checked = false; ctl.sort.value = 'iou-desc';
    }

    function showUnit(n) {
      var f = readFilters();
      compute();
      var at = current.findIndex(function (u) { return u.u === n; });
      if (at < 0) { resetControls(); compute(); f = readFilters(); at = current.findIndex(function (u) { return u.u === n; }); }
      if (at < 0) return false;
      page = Math.floor(at / f.per);
      render();
      var c = document.getElementById('unit-' + n);
      if (c) {
        c.scrollIntoView({ block: 'center' });
        c.classList.add('targeted');
      }
      return true;
    }

    function fromHash() {
      var h = decodeURIComponent(location.hash.replace(/^#/, ''));
      var m = /^unit-(\d+)$/.exec(h);
      if (m) { showUnit(parseInt(m[1], 10)); return; }
      if (h.indexOf('=') > 0) {
        h.split('&').forEach(function (kv) {
          var i = kv.indexOf('='), k = kv.slice(0, i), v = kv.slice(i + 1);
          if (k === 'cat') ctl.cat.value = v;
          else if (k === 'label') ctl.q.value = '=' + v;
          else if (k === 'q') ctl.q.value = v;
          else if (k === 'det') ctl.det.checked = v === '1';
        });
        update();
      }
    }

    ['cat', 'det', 'sort', 'per'].forEach(function (k) { ctl[k].addEventListener('change', update); });
    ['q', 'min', 'max'].forEach(function (k) { ctl[k].addEventListener('input', update); });
    ctl.reset.addEventListener('click', function () { resetControls(); update(); });
    window.addEventListener('hashchange', fromHash);

    compute();
    render();
    if (location.hash) fromHash();

    var R = window.ndReport;
    R.units = units.length;
    R.layer = D.layer;
    R.setFilter = function (f) {
      if ('cat' in f) ctl.cat.value = f.cat;
      if ('q' in f) ctl.q.value = f.q;
      if ('min' in f) ctl.min.value = f.min === null ? '' : f.min;
      if ('max' in f) ctl.max.value = f.max === null ? '' : f.max;
      if ('det' in f) ctl.det.checked = !!f.det;
      if ('sort' in f) ctl.sort.value = f.sort;
      update();
      return { matching: R.matching, shown: R.shown };
    };
    R.visibleUnits = function () {
      return Array.prototype.map.call(cardsEl.querySelectorAll('.card'), function (c) {
        return { unit: +c.getAttribute('data-unit'), cat: c.getAttribute('data-cat') };
      });
    };
    R.showUnit = showUnit;
  }

  /* ------------------------------------------------------------------ concepts page */
  function initConcepts() {
    var cat = document.getElementById('c-cat'), q = document.getElementById('c-q');
    var secs = Array.prototype.slice.call(document.querySelectorAll('.concept'));
    function apply() {
      var c = cat.value, s = q.value.trim().toLowerCase(), n = 0;
      secs.forEach(function (sec) {
        var ok = (!c || sec.getAttribute('data-cat') === c) && (!s || sec.getAttribute('data-label').indexOf(s) >= 0);
        sec.hidden = !ok;
        if (ok) n++;
      });
      document.getElementById('c-count').textContent = n + ' of ' + secs.length + ' concepts';
      window.ndReport.shown = n;
    }
    cat.addEventListener('change', apply);
    q.addEventListener('input', apply);
    apply();
    window.ndReport.concepts = secs.length;
  }

  try {
    if (D.page === 'layer') initLayer();
    else if (D.page === 'concepts') initConcepts();
  } finally {
    window.ndReport.ready = true;
    document.body.setAttribute('data-ready', '1');
  }
})();
