/* netdissect report: cards, filters, pagination, the unit view and search. No network, no libraries.
 * A page's data is embedded as JSON in <script id="nd-data" type="application/json">. Every
 * number it shows (detector status, counts) was computed in Python; nothing is re-derived here.
 * Images: a tile is the dataset image (a cell of a JPEG atlas under images/) under the unit's
 * overlay (a cell of a PNG sheet under strips/<layer>/), both CSS backgrounds.
 * window.ndReport exposes the state (used by the tests); window.ndParts holds the fillers of
 * the card's sections (one per data-part of the card template). */
(function () {
  'use strict';

  function readJSON(id) {
    var n = document.getElementById(id);
    return n ? JSON.parse(n.textContent) : null;
  }
  var D = readJSON('nd-data') || { page: 'overview' };
  var R = window.ndReport = { page: D.page, ready: false };
  var parts = window.ndParts = window.ndParts || {};

  function el(tag, attrs, children) {
    var n = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] === null || attrs[k] === undefined) continue;
        if (k === 'text') n.textContent = attrs[k];
        else if (k === 'cls') n.className = attrs[k];
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
  function $(id) { return document.getElementById(id); }
  var catInfo = {};
  (D.categories || []).forEach(function (c) { catInfo[c.name] = c; });
  function catColor(c) { return catInfo[c] ? catInfo[c].color : '#9A9A9A'; }
  function badge(c) {
    return el('span', { cls: 'cat', style: 'background:' + catColor(c) + ';color:' + (catInfo[c] ? catInfo[c].text : '#000'), text: c || 'none' });
  }

  /* ------------------------------------------------------------------ tiles */
  function pos(col, row, cols, rows) {
    var x = cols > 1 ? 100 * col / (cols - 1) : 0, y = rows > 1 ? 100 * row / (rows - 1) : 0;
    return x.toFixed(4) + '% ' + y.toFixed(4) + '%';
  }
  function sprite(cls, file, col, row, cols, rows) {
    return el('div', { cls: cls, style: 'background-image:url("' + file + '");background-size:' +
      (cols * 100) + '% ' + (rows * 100) + '%;background-position:' + pos(col, row, cols, rows) });
  }
  /* t = [image, column, max activation, label present, region share] */
  function tile(atlas, layout, unit, t, width) {
    var slot = atlas.slot && atlas.slot[String(t[0])];
    var h = Math.round(width * (atlas.ih || 1) / (atlas.iw || 1));
    var box = el('div', { cls: 'tile', style: 'width:' + width + 'px;height:' + h + 'px', 'data-image': t[0] });
    if (!slot) { box.appendChild(el('div', { cls: 'missing', text: 'image missing' })); return box; }
    box.appendChild(sprite('raw', atlas.files[slot[0]], slot[1], slot[2], atlas.cols, atlas.cols));
    if (layout && layout.sheets) {
      var sheet = Math.floor(unit / layout.per);
      box.appendChild(sprite('ovl', layout.sheets[sheet], t[1], unit % layout.per, layout.k, layout.per));
      if (layout.fsheets && layout.fsheets.length)   /* the same overlay, outlining the unit's formula */
        box.appendChild(sprite('fovl', layout.fsheets[sheet], t[1], unit % layout.per, layout.k, layout.per));
    }
    var has = t[3] === true ? 'label present' : (t[3] === false ? 'label absent' : '');
    var frac = t[4] === null || t[4] === undefined ? '' : 'unit region ' + (100 * t[4]).toFixed(1) + '% of the image';
    box.title = [slot[3], 'max activation ' + fmt(t[2]), frac, has].filter(Boolean).join('\n');
    return box;
  }

  /* a small colour map for heat maps (dark purple -> red -> yellow), alpha rising with the value */
  var STOPS = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
  function heatColor(v) {
    var x = v / 255 * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(x)), f = x - i;
    var a = STOPS[i], b = STOPS[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function decode(b64) {
    var s = atob(b64), out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  /* The unit's native map for tile column j, drawn where the run's upsampler places its cells. */
  function heatCanvas(bytes, j, shape, place, atlas, width, height) {
    var h = shape[0], w = shape[1], off = document.createElement('canvas');
    off.width = w; off.height = h;
    var ctx = off.getContext('2d'), img = ctx.createImageData(w, h);
    for (var p = 0; p < h * w; p++) {
      var v = bytes[j * h * w + p], c = heatColor(v);
      img.data[4 * p] = c[0]; img.data[4 * p + 1] = c[1]; img.data[4 * p + 2] = c[2];
      img.data[4 * p + 3] = Math.round(40 + 190 * v / 255);
    }
    ctx.putImageData(img, 0, 0);
    var cv = el('canvas', { cls: 'heat', width: width, height: height });
    var g = cv.getContext('2d');
    g.imageSmoothingEnabled = true;
    var sx = width / atlas.iw, sy = height / atlas.ih;
    g.drawImage(off, place[0] * sx, place[1] * sy, place[2] * sx, place[3] * sy);
    return cv;
  }

  /* ------------------------------------------------------------------ layer page */
  function initLayer() {
    var units = D.units, byUnit = {};
    units.forEach(function (u) { byUnit[u.u] = u; });
    var imageLevel = {};
    (D.imageLevel || []).forEach(function (c) { imageLevel[c] = true; });
    var ctl = { cat: $('f-cat'), q: $('f-q'), runners: $('f-runners'), min: $('f-min'), max: $('f-max'),
      det: $('f-det'), sort: $('f-sort'), per: $('f-per'), view: $('f-view'), size: $('f-size'), reset: $('f-reset'), op: $('f-op') };
    var cardsEl = $('cards'), tpl = $('card-template');
    var page = 0, current = [];
    var TILE = parseInt(ctl.size.value, 10) || 120;

    function readFilters() {
      var mn = parseFloat(ctl.min.value), mx = parseFloat(ctl.max.value);
      return { cat: ctl.cat.value, q: ctl.q.value.trim().toLowerCase(), runners: ctl.runners.checked,
        min: isNaN(mn) ? null : mn, max: isNaN(mx) ? null : mx, det: ctl.det.checked,
        sort: ctl.sort.value, per: parseInt(ctl.per.value, 10) || 50, op: ctl.op ? ctl.op.value : '' };
    }
    function labelMatch(u, q, runners) {
      var exact = q.charAt(0) === '=', s = exact ? q.slice(1) : q;
      var hit = function (l) { l = l.toLowerCase(); return exact ? l === s : l.indexOf(s) >= 0; };
      if (hit(u.l)) return true;
      return runners && (u.r || []).some(function (r) { return hit(r[0]); });
    }
    function matches(u, f) {
      if (f.cat && u.c !== f.cat) return false;
      if (f.det && !u.d) return false;
      if (f.op) {   /* formulas: units whose formula uses an operator, or is a single concept */
        var ops = u.fo || [];
        if (f.op === 'single' ? ops.length > 0 : ops.indexOf(f.op) < 0) return false;
      }
      if (f.min !== null && !(u.i >= f.min)) return false;
      if (f.max !== null && !(u.i <= f.max)) return false;
      if (f.q) {
        var m = /^#?(\d+)$/.exec(f.q);
        if (m) { if (u.u !== parseInt(m[1], 10)) return false; }
        else if (!labelMatch(u, f.q, f.runners)) return false;
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

    function conceptLink(label, cat, text) {
      return el('a', { href: 'concepts.html#' + slug(label, cat), text: text || label, title: 'units for ' + label });
    }
    function ioubar(u) {
      var scale = D.scale || 1;
      var w = Math.max(0, Math.min(100, 100 * (u.i || 0) / scale));
      var t = Math.max(0, Math.min(100, 100 * D.thr / scale));
      return el('div', { cls: 'ioubar', title: 'IoU ' + fmt(u.i) + '; detector threshold ' + D.thr + '; scale 0 to ' + scale + ' on every layer' }, [
        el('span', { cls: 'fill', style: 'width:' + w.toFixed(1) + '%;background:' + catColor(u.c) }),
        el('span', { cls: 'thr', style: 'left:calc(' + t.toFixed(1) + '% - 1px)' })
      ]);
    }
    parts.unit = function (n, u) {
      n.appendChild(el('a', { href: '#view-' + u.u, text: 'unit ' + u.u, title: 'open the unit view' }));
    };
    parts.label = function (n, u) { n.appendChild(u.l ? conceptLink(u.l, u.c) : document.createTextNode('(none)')); };
    parts.category = function (n, u) { n.appendChild(badge(u.c)); };
    parts.iou = function (n, u) {
      n.appendChild(el('div', { cls: 'iouline' }, [
        el('span', {}, ['IoU ', el('span', { cls: 'iouval', text: fmt(u.i) })]),
        el('span', { cls: 'verdict ' + (u.d ? 'yes' : 'no'), text: u.d ? 'detector' : 'below ' + D.thr })]));
      n.appendChild(ioubar(u));
      if (imageLevel[u.c]) n.appendChild(el('div', { cls: 'lvl', text: 'image-level label: a dashed frame marks the images that carry it' }));
    };
    parts.runners = function (n, u) {
      if (!u.r || !u.r.length) { n.remove(); return; }
      n.appendChild(document.createTextNode('runners-up: '));
      u.r.forEach(function (x) {
        var item = el('span', { cls: 'r', title: x[1] + ', IoU ' + fmt(x[2]) }, [el('span', { cls: 'dot', style: 'background:' + catColor(x[1]) })]);
        item.appendChild(x[3] ? conceptLink(x[0], x[1], x[0] + ' ' + fmt(x[2])) : document.createTextNode(x[0] + ' ' + fmt(x[2])));
        n.appendChild(item);
      });
    };
    parts.formula = function (n, u) {
      if (!u.f) { n.remove(); return; }
      var gain = (u.fi || 0) - (u.i || 0);
      n.appendChild(document.createTextNode('formula: '));
      n.appendChild(el('code', { text: u.f }));
      n.appendChild(el('span', { cls: 'gain', text: ' IoU ' + fmt(u.fi) + ' (+' + fmt(gain) + ')',
        title: 'IoU of the formula; in parentheses its gain over the label' }));
    };
    parts.threshold = function (n, u) {
      n.textContent = 'threshold T = ' + Number(u.t).toPrecision(4);
      n.title = 'activation threshold of this unit (its top-quantile level over the dataset)';
    };
    parts.strip = function (n, u) {
      if (!u.x || !u.x.length) { n.appendChild(el('div', { cls: 'nostrip', text: 'no images for this unit' })); return; }
      u.x.forEach(function (t) {
        var a = el('a', { href: '#view-' + u.u, cls: 'tilelink' }, [tile(D.atlas, D.tiles, u.u, t, TILE)]);
        n.appendChild(a);
      });
    };

    function card(u) {
      var node = tpl.content.firstElementChild.cloneNode(true);
      node.id = 'unit-' + u.u;
      node.classList.add(u.d ? 'det' : 'nondet');
      if (location.hash === '#unit-' + u.u) node.classList.add('targeted');
      node.setAttribute('data-unit', u.u);
      node.setAttribute('data-cat', u.c);
      node.setAttribute('data-detector', u.d);
      Array.prototype.forEach.call(node.querySelectorAll('[data-part]'), function (n) {
        var fill = parts[n.getAttribute('data-part')];
        if (fill) fill(n, u, D);
      });
      return node;
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
      page = Math.max(0, Math.min(page, pages - 1));
      var slice = current.slice(page * f.per, (page + 1) * f.per);
      cardsEl.textContent = '';
      var frag = document.createDocumentFragment();
      slice.forEach(function (u) { frag.appendChild(card(u)); });
      if (!slice.length) frag.appendChild(el('div', { cls: 'empty', text: 'No unit matches these filters.' }));
      cardsEl.appendChild(frag);
      var det = current.filter(function (u) { return u.d; }).length;
      var from = current.length ? page * f.per + 1 : 0;
      $('count').textContent = (current.length === units.length ? units.length + ' units' :
        current.length + ' of ' + units.length + ' units match') + ' (' + det + (det === 1 ? ' detector' : ' detectors') + ')' +
        (current.length ? ' \u00b7 showing ' + from + '\u2013' + (page * f.per + slice.length) : '');
      pager($('pager-top'), pages);
      pager($('pager-bottom'), pages);
      R.matching = current.length; R.matchingDetectors = det; R.shown = slice.length; R.page = page; R.pages = pages;
      document.body.setAttribute('data-shown', String(slice.length));
    }
    function go(p, scroll) {
      page = p;
      render();
      if (scroll) window.scrollTo(0, document.querySelector('.controls').offsetTop - 50);
    }
    function update() { compute(); page = 0; render(); }
    function resetControls() {
      ctl.cat.value = ''; ctl.q.value = ''; ctl.min.value = ''; ctl.max.value = '';
      ctl.det.checked = false; ctl.runners.checked = false; ctl.sort.value = 'iou-desc';
      if (ctl.op) ctl.op.value = '';
    }
    function showUnit(n) {
      compute();
      var f = readFilters();
      var at = current.findIndex(function (u) { return u.u === n; });
      if (at < 0) { resetControls(); compute(); at = current.findIndex(function (u) { return u.u === n; }); }
      if (at < 0) return false;
      page = Math.floor(at / f.per);
      render();
      var c = $('unit-' + n);
      if (c) { c.scrollIntoView({ block: 'center' }); c.classList.add('targeted'); }
      return true;
    }

    /* ---- the unit view */
    var view = $('unit-view'), heat = readJSON('nd-heat') || {}, viewing = null;
    function setMode(mode) {
      view.setAttribute('data-mode', mode);
      $('uv-mode').value = mode;
    }
    function openView(n) {
      var u = byUnit[n];
      if (!u) return false;
      viewing = n;
      $('uv-title').textContent = D.layer + ' \u00b7 unit ' + n;
      var info = $('uv-info'), tiles = $('uv-tiles');
      info.textContent = ''; tiles.textContent = '';
      info.appendChild(el('p', { cls: 'uv-label' }, [u.l ? conceptLink(u.l, u.c) : '(no label)', ' ', badge(u.c)]));
      info.appendChild(el('p', {}, ['IoU ', el('b', { text: fmt(u.i) }), ' \u00b7 ',
        el('span', { cls: 'verdict ' + (u.d ? 'yes' : 'no'), text: u.d ? 'detector (IoU > ' + D.thr + ')' : 'not a detector (IoU \u2264 ' + D.thr + ')' })]));
      info.appendChild(el('p', { cls: 'thrval', text: 'threshold T = ' + Number(u.t).toPrecision(4) }));
      if (u.f) info.appendChild(el('p', { cls: 'formula' }, ['formula: ', el('code', { text: u.f }), ' \u00b7 IoU ', el('b', { text: fmt(u.fi) })]));
      var rows = (u.b || []).map(function (b) {
        return el('tr', {}, [el('th', { scope: 'row' }, [badge(b[0])]),
          el('td', {}, [b[3] ? conceptLink(b[1], b[0]) : document.createTextNode(b[1] || '\u2013')]),
          el('td', { cls: 'num' + (b[2] > D.thr ? '' : ' weak'), text: fmt(b[2]) })]);
      });
      info.appendChild(el('table', { cls: 'kv percat' }, [el('caption', { text: 'best label per category' }),
        el('tbody', {}, rows)]));
      if (u.r && u.r.length) {
        var rl = el('p', { cls: 'runners' });
        parts.runners(rl, u);
        info.appendChild(rl);
      }
      info.appendChild(el('p', {}, [el('a', { href: '#unit-' + n, text: 'show its card' })]));
      var bytes = heat[String(n)] ? decode(heat[String(n)]) : null;
      var width = D.atlas.iw ? D.atlas.iw * Math.max(1, Math.ceil(224 / D.atlas.iw)) : 224;   // full resolution, enlarged when small
      (u.x || []).forEach(function (t, i) {
        var box = tile(D.atlas, D.tiles, n, t, width);
        if (bytes) box.appendChild(heatCanvas(bytes, t[1], D.mapShape, D.tiles.placement, D.atlas, width, box.clientHeight || Math.round(width * D.atlas.ih / D.atlas.iw)));
        var slot = D.atlas.slot[String(t[0])];
        var cap = [(i + 1) + '. ' + (slot ? slot[3] : ''), 'max ' + fmt(t[2]),
          t[4] === null ? '' : 'region ' + (100 * t[4]).toFixed(1) + '%',
          t[3] === true ? 'label present' : (t[3] === false ? 'label absent' : '')].filter(Boolean).join(' \u00b7 ');
        tiles.appendChild(el('figure', { cls: 'uv-tile' }, [box, el('figcaption', { text: cap })]));
      });
      if (!(u.x || []).length) tiles.appendChild(el('p', { cls: 'note', text: 'no images for this unit' }));
      view.hidden = false;
      document.body.classList.add('viewing');
      R.viewing = n;
      return true;
    }
    function closeView() {
      view.hidden = true;
      document.body.classList.remove('viewing');
      R.viewing = null;
      if (/^#view-/.test(location.hash)) history.replaceState(null, '', location.pathname + location.search + (viewing !== null ? '#unit-' + viewing : ''));
    }
    $('uv-close').addEventListener('click', closeView);
    $('uv-mode').addEventListener('change', function () { setMode(this.value); });
    view.addEventListener('click', function (ev) { if (ev.target === view) closeView(); });
    document.addEventListener('keydown', function (ev) { if (ev.key === 'Escape' && !view.hidden) closeView(); });
    setMode('regions');

    function fromHash() {
      var h = decodeURIComponent(location.hash.replace(/^#/, ''));
      var m = /^unit-(\d+)$/.exec(h);
      if (m) { if (!view.hidden) { view.hidden = true; document.body.classList.remove('viewing'); } showUnit(parseInt(m[1], 10)); return; }
      m = /^view-(\d+)$/.exec(h);
      if (m) { openView(parseInt(m[1], 10)); return; }
      if (h.indexOf('=') > 0) {
        resetControls();
        h.split('&').forEach(function (kv) {
          var i = kv.indexOf('='), k = kv.slice(0, i), v = kv.slice(i + 1);
          if (k === 'cat') ctl.cat.value = v;
          else if (k === 'label') ctl.q.value = '=' + v;
          else if (k === 'q') ctl.q.value = v;
          else if (k === 'det') ctl.det.checked = v === '1';
          else if (k === 'runners') ctl.runners.checked = v === '1';
          else if (k === 'op' && ctl.op) ctl.op.value = v;
        });
        update();
        Array.prototype.forEach.call(document.querySelectorAll('.catbar'), function (b) {
          b.classList.toggle('on', !!ctl.cat.value && b.getAttribute('data-cat') === ctl.cat.value);
        });
      }
    }

    ['cat', 'det', 'sort', 'per', 'runners', 'op'].forEach(function (k) { if (ctl[k]) ctl[k].addEventListener('change', update); });
    ['q', 'min', 'max'].forEach(function (k) { ctl[k].addEventListener('input', update); });
    ctl.view.addEventListener('change', function () {
      document.body.classList.toggle('raw', ctl.view.value === 'raw');
      document.body.classList.toggle('formula', ctl.view.value === 'formula');
    });
    ctl.size.addEventListener('change', function () { TILE = parseInt(ctl.size.value, 10) || 120; render(); });
    ctl.reset.addEventListener('click', function () { resetControls(); update(); });
    window.addEventListener('hashchange', fromHash);

    compute();
    render();
    if (location.hash) fromHash();

    R.units = units.length;
    R.detectors = units.filter(function (u) { return u.d; }).length;
    R.layer = D.layer;
    R.setFilter = function (f) {
      if ('cat' in f) ctl.cat.value = f.cat;
      if ('q' in f) ctl.q.value = f.q;
      if ('runners' in f) ctl.runners.checked = !!f.runners;
      if ('min' in f) ctl.min.value = f.min === null ? '' : f.min;
      if ('max' in f) ctl.max.value = f.max === null ? '' : f.max;
      if ('det' in f) ctl.det.checked = !!f.det;
      if ('sort' in f) ctl.sort.value = f.sort;
      if ('op' in f && ctl.op) ctl.op.value = f.op;
      update();
      return { matching: R.matching, shown: R.shown };
    };
    R.visibleUnits = function () {
      return Array.prototype.map.call(cardsEl.querySelectorAll('.card'), function (c) {
        return { unit: +c.getAttribute('data-unit'), cat: c.getAttribute('data-cat'), detector: c.getAttribute('data-detector') === '1' };
      });
    };
    R.showUnit = showUnit;
    R.openView = openView;
    R.closeView = closeView;
    R.setMode = setMode;
  }

  /* ------------------------------------------------------------------ concepts page */
  function initConcepts() {
    var cat = $('c-cat'), q = $('c-q'), det = $('c-det');
    var secs = Array.prototype.slice.call(document.querySelectorAll('.concept'));
    function apply() {
      var c = cat.value, s = q.value.trim().toLowerCase(), n = 0;
      secs.forEach(function (sec) {
        var ok = (!c || sec.getAttribute('data-cat') === c) && (!s || sec.getAttribute('data-label').indexOf(s) >= 0) &&
          (!det.checked || +sec.getAttribute('data-detectors') > 0);
        sec.hidden = !ok;
        if (ok) n++;
      });
      $('c-count').textContent = n + ' of ' + secs.length + ' concepts';
      R.shown = n;
    }
    Array.prototype.forEach.call(document.querySelectorAll('.evidence'), function (ev) {
      var li = +ev.getAttribute('data-layer'), k = +ev.getAttribute('data-unit');
      var layer = D.layers[li], x = D.evidence[li + ':' + k] || [];
      var strip = ev.querySelector('.evstrip');
      x.forEach(function (t) {
        strip.appendChild(el('a', { href: layer.page + '#view-' + k, cls: 'tilelink' }, [tile(D.atlas, layer.tiles, k, t, 96)]));
      });
    });
    cat.addEventListener('change', apply);
    q.addEventListener('input', apply);
    det.addEventListener('change', apply);
    apply();
    R.concepts = secs.length;
  }

  /* ------------------------------------------------------------------ overview: search every layer */
  function initOverview() {
    var q = $('s-q'), det = $('s-det'), list = $('s-results');
    if (!q) return;
    function apply() {
      var s = q.value.trim().toLowerCase();
      list.textContent = '';
      if (!s) { $('s-count').textContent = ''; R.results = 0; return; }
      var hits = [];
      D.units.forEach(function (x) {
        if (det.checked && !x[5]) return;
        var top = x[2].toLowerCase().indexOf(s) >= 0;
        var run = !top && x[6].some(function (r) { return r.toLowerCase().indexOf(s) >= 0; });
        if (top || run) hits.push([top ? 0 : 1, x]);
      });
      hits.sort(function (a, b) { return a[0] - b[0] || (b[1][4] || 0) - (a[1][4] || 0); });
      hits.slice(0, 200).forEach(function (h) {
        var x = h[1], layer = D.layers[x[0]];
        list.appendChild(el('li', { cls: x[5] ? 'det' : 'nondet' }, [
          el('a', { href: layer.page + '#unit-' + x[1], text: layer.name + ' unit ' + x[1] }), ' ',
          el('span', { cls: 'lab', text: x[2] || '(none)' }), ' ', badge(x[3]),
          ' IoU ' + fmt(x[4]) + (x[5] ? ' \u00b7 detector' : ''),
          h[0] ? el('span', { cls: 'alt', text: ' (runner-up: ' + x[6].filter(function (r) { return r.toLowerCase().indexOf(s) >= 0; }).join(', ') + ')' }) : null]));
      });
      $('s-count').textContent = hits.length + (hits.length === 1 ? ' unit' : ' units') + (hits.length > 200 ? ' (first 200 shown)' : '');
      R.results = hits.length;
    }
    q.addEventListener('input', apply);
    det.addEventListener('change', apply);
    R.search = function (s, d) { q.value = s; det.checked = !!d; apply(); return R.results; };
  }

  try {
    if (D.page === 'layer') initLayer();
    else if (D.page === 'concepts') initConcepts();
    else if (D.page === 'overview') initOverview();
  } finally {
    R.ready = true;
    document.body.setAttribute('data-ready', '1');
  }
})();
