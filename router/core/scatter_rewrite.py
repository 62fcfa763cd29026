# pglast's AST types mark every field Optional, though the parser fills the ones read here;
# checking each would bury the logic, so these error codes are off for this module only.
# mypy: disable-error-code="arg-type,index,assignment,union-attr,misc,attr-defined"
"""Cross-shard reads, the rewrite (pure): one SELECT's parse tree in, the statement each shard
runs and the plan that merges their answers out (router/core/scatter_plan.py). Whatever cannot be
merged into exactly PostgreSQL's own answer is refused here with `ScatterRefused`, naming the
part and why; nothing is guessed.

The per-shard statement keeps the original's output columns at their positions (so `GROUP BY
1` and `ORDER BY 2` mean the same on the shards) and appends hidden columns the merge needs:
sort keys that are not output columns, the count that turns `avg` into sum and count,
aggregates that only HAVING or ORDER BY name, group keys not selected.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import (
    A_Expr_Kind,
    BoolExprType,
    MinMaxOp,
    NullTestType,
    SetOperation,
    SortByDir,
    SortByNulls,
    SubLinkType,
)

from router.config import TableConfig
from router.core.confinement import Confinement
from router.core.scatter_checks import (
    C_COLLATIONS,
    HIDDEN_PREFIX,
    check_colocated,
    check_set_returning,
    check_shape,
    check_sublink_aggregates,
)
from router.core.scatter_plan import (
    Bound,
    Combine,
    Cond,
    Grouping,
    Operand,
    Refusal,
    ScatterPlan,
    SortKey,
)
from router.core.scatter_tree import (
    AGGREGATES,
    func_name,
    has_aggregate,
    is_aggregate,
    refuse,
    sql_text,
    walk,
)

__all__ = ["plan_scatter"]


_INT8_MAX = 2**63 - 1
_COMPARISONS = {"=": "=", "<>": "<>", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _shard_sql(stmt: Any) -> tuple[str, tuple[int, ...]]:
    """The shards' statement, its parameters numbered $1.. in order of first use; and the
    original numbers they stand for."""
    numbers: dict[int, int] = {}
    for node in walk(stmt, into_queries=True):
        if isinstance(node, ast.ParamRef):
            numbers.setdefault(node.number, 0)
    for new, old in enumerate(sorted(numbers), 1):
        numbers[old] = new
    for node in walk(stmt, into_queries=True):
        if isinstance(node, ast.ParamRef):
            node.number = numbers[node.number]
    return sql_text(stmt), tuple(sorted(numbers))


def _bound(node: Any, what: str) -> Bound | None:
    if node is None:
        return None
    if isinstance(node, ast.TypeCast):
        node = node.arg
    if isinstance(node, ast.ParamRef):
        return Bound(param=node.number)
    if isinstance(node, ast.A_Const):
        if node.isnull:
            return None  # LIMIT ALL / LIMIT NULL
        if isinstance(node.val, ast.Integer):
            return Bound(value=node.val.ival)
        if isinstance(node.val, ast.Float) and node.val.fval.isdigit():  # beyond int4
            if int(node.val.fval) > _INT8_MAX:
                raise refuse(Refusal.LIMIT, node, f"{what} is out of bigint's range")
            return Bound(value=int(node.val.fval))
    raise refuse(Refusal.LIMIT, node, f"{what} must be a constant or a parameter here")


# ---- output columns and shard keys -----------------------------------------------------------


_NAMELESS = "?column?"


def _implicit_name(val: Any) -> str | None:
    """The name PostgreSQL gives an output column without an alias, or None where the router
    cannot tell."""
    figured = _figure_colname(val)
    return None if figured is None else figured[0]


def _figure_colname(val: Any) -> tuple[str, int] | None:
    """PostgreSQL's FigureColnameInternal: a name and its strength (2: a real name, 1: a
    type's or "case", 0: none), or None for what the router does not follow."""
    if isinstance(val, ast.ColumnRef):
        last = val.fields[-1]
        return (str(last.sval), 2) if isinstance(last, ast.String) else (_NAMELESS, 0)
    if isinstance(val, ast.A_Indirection):
        names = [str(i.sval) for i in val.indirection if isinstance(i, ast.String)]
        return (names[-1], 2) if names else _figure_colname(val.arg)
    if isinstance(val, ast.FuncCall):
        return val.funcname[-1].sval, 2
    if isinstance(val, ast.TypeCast):
        inner = _figure_colname(val.arg)
        if inner is not None and inner[1] <= 1:
            return val.typeName.names[-1].sval, 1
        return inner
    if isinstance(val, ast.CollateClause):
        return _figure_colname(val.arg)
    if isinstance(val, ast.CaseExpr):
        default = _figure_colname(val.defresult) if val.defresult is not None else (_NAMELESS, 0)
        if default is not None and default[1] <= 1:
            return "case", 1
        return default
    if isinstance(val, ast.A_Expr):
        return ("nullif", 2) if val.kind == A_Expr_Kind.AEXPR_NULLIF else (_NAMELESS, 0)
    if isinstance(val, ast.SubLink):
        if val.subLinkType == SubLinkType.EXPR_SUBLINK:
            return _sublink_colname(val.subselect)
        fixed = {SubLinkType.EXISTS_SUBLINK: "exists", SubLinkType.ARRAY_SUBLINK: "array"}
        name = fixed.get(val.subLinkType)
        return (name, 2) if name is not None else (_NAMELESS, 0)
    if isinstance(val, ast.MinMaxExpr):
        return ("greatest" if val.op == MinMaxOp.IS_GREATEST else "least"), 2
    named = {ast.A_ArrayExpr: "array", ast.RowExpr: "row", ast.CoalesceExpr: "coalesce",
             ast.GroupingFunc: "grouping"}
    if type(val) in named:
        return named[type(val)], 2
    if isinstance(val, (ast.A_Const, ast.ParamRef, ast.BoolExpr, ast.NullTest,
                        ast.BooleanTest)):
        return _NAMELESS, 0
    return None


def _sublink_colname(select: Any) -> tuple[str, int] | None:
    """A scalar subquery's column takes the name of its (leftmost branch's) first column."""
    while select.op != SetOperation.SETOP_NONE:
        select = select.larg
    if select.valuesLists or not select.targetList or _is_star(select.targetList[0]):
        return None
    first = select.targetList[0]
    inner = first.name or _implicit_name(first.val)
    return None if inner is None else (inner, 2)


def _from_tables(stmt: Any, tables: Mapping[str, TableConfig]) -> dict[str, str | None]:
    """The outer query's FROM entries (alias -> sharded table), only those whose every row
    appears in the result: the nullable side of an outer join would add NULL keys."""
    ctes = {cte.ctename for cte in (stmt.withClause.ctes if stmt.withClause else ())}
    entries: dict[str, str | None] = {}

    def visit(item: Any, preserved: bool) -> None:
        if isinstance(item, ast.RangeVar):
            alias = item.alias.aliasname if item.alias is not None else item.relname
            sharded = (item.relname in tables and item.relname not in ctes
                       and item.schemaname in (None, "public"))
            entries[alias] = item.relname if sharded and preserved else None
        elif isinstance(item, ast.JoinExpr):
            kind = item.jointype.name
            visit(item.larg, preserved and kind in ("JOIN_INNER", "JOIN_LEFT"))
            visit(item.rarg, preserved and kind in ("JOIN_INNER", "JOIN_RIGHT"))
        else:
            alias = getattr(item, "alias", None)
            if alias is not None:
                entries[alias.aliasname] = None

    for item in stmt.fromClause or ():
        visit(item, True)
    return entries


def _is_shard_key(val: Any, entries: Mapping[str, str | None],
                  tables: Mapping[str, TableConfig]) -> bool:
    """A column holding a shard key of an outer table: equal values live on one shard."""
    if not isinstance(val, ast.ColumnRef) or not all(isinstance(f, ast.String)
                                                     for f in val.fields):
        return False
    names = [f.sval for f in val.fields]

    def keys(table: str) -> set[str]:
        cfg = tables[table]
        return {*cfg.id_columns, *([cfg.region_column] if cfg.region_column else [])}

    if len(names) == 2:
        table = entries.get(names[0])
        return table is not None and names[1] in keys(table)
    if len(names) == 1:
        owners = [t for t in entries.values() if t is not None and names[0] in keys(t)]
        return len(owners) == 1
    return False


def _bare_name(node: Any) -> str | None:
    if isinstance(node, ast.ColumnRef) and len(node.fields) == 1 and isinstance(
            node.fields[0], ast.String):
        return str(node.fields[0].sval)
    return None


def _is_star(target: Any) -> bool:
    return isinstance(target.val, ast.ColumnRef) and isinstance(target.val.fields[-1], ast.A_Star)


# ---- the plan ---------------------------------------------------------------------------------


class _Builder:
    def __init__(self, stmt: Any, tables: Mapping[str, TableConfig]) -> None:
        self.stmt = stmt
        self.targets: list[Any] = list(stmt.targetList or ())
        self.hidden: list[Any] = []  # ResTargets appended after the output columns
        self.combine: list[Combine] = []
        self.entries = _from_tables(stmt, tables)
        self.tables = tables
        self.star = any(_is_star(t) for t in self.targets)

    def add_hidden(self, val: Any, combine: Combine = Combine.FIRST) -> int:
        self.hidden.append(ast.ResTarget(name=f"{HIDDEN_PREFIX}{len(self.hidden)}", val=val))
        self.combine.append(combine)
        return len(self.hidden) - 1  # turned into a negative index once all are known

    def visible_index(self, position: int) -> int | None:
        """The row index of output column `position` (0-based); behind a `*`, whose width the
        plan does not know, a hidden copy of its expression (a negative index)."""
        if any(_is_star(t) for t in self.targets[:position]):
            return -1 - self.add_hidden(self.targets[position].val)
        return position

    def output_column(self, node: Any, *, by_name: bool = True) -> int | None:
        """The output column an ORDER BY / GROUP BY item names: by position, by an output
        name (ORDER BY's rule: output names first), or as the same expression. Without
        `by_name` (HAVING) only as the same expression."""
        if by_name and isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
            position = int(node.val.ival or 0) - 1
            if position < 0 or (position >= len(self.targets) and not self.star):
                # Appended columns would make the shards accept it: refused as PostgreSQL does.
                raise refuse(Refusal.SHAPE, node, "position is not in select list")
            return position
        name = _bare_name(node)
        if by_name and name is not None:
            named = [i for i, t in enumerate(self.targets) if (t.name or _implicit_name(t.val))
                     == name]
            if len({sql_text(self.targets[i].val) for i in named}) > 1:
                raise refuse(Refusal.ORDER, node, "the name is ambiguous among the output "
                                                   "columns")
            if named:
                return self.visible_index(named[0])
            if any(t.name is None and not _is_star(t) and _implicit_name(t.val) is None
                   for t in self.targets):
                raise refuse(Refusal.ORDER, node, "an unnamed output column may carry this "
                                                   "name; name it with AS, or sort by position")
        return self.same_expression(node)

    def same_expression(self, node: Any) -> int | None:
        text = sql_text(node)
        for i, t in enumerate(self.targets):
            if sql_text(t.val) == text:
                return self.visible_index(i)
        return None

    def group_column(self, node: Any) -> int | None:
        """The output column a GROUP BY item names. A bare name is an input column first
        (GROUP BY's rule), an output name only when no input column has it, which the router
        cannot tell: refused when it names an output column of another expression."""
        name = _bare_name(node)
        if name is None:
            return self.output_column(node)
        found = self.same_expression(node)
        if found is None:
            # `c.region` is the input column `region` too: were another table's `region` in
            # reach, the bare name would be ambiguous and the shards would say so.
            found = next((self.visible_index(i) for i, t in enumerate(self.targets)
                          if isinstance(t.val, ast.ColumnRef) and _implicit_name(t.val) == name
                          and all(isinstance(f, ast.String) for f in t.val.fields)), None)
        if found is None and any((t.name or _implicit_name(t.val)) == name
                                 for t in self.targets):
            raise refuse(Refusal.SHAPE, node, "GROUP BY a name of an output column of another "
                                               "expression is ambiguous here; group by the "
                                               "expression or its position")
        return found

    def sort_keys(self, resolve: Any) -> list[tuple[int, bool, bool]]:
        keys: list[tuple[int, bool, bool]] = []
        for item in self.stmt.sortClause or ():
            if item.sortby_dir == SortByDir.SORTBY_USING:
                raise refuse(Refusal.ORDER, item, "ORDER BY ... USING is not merged")
            node = item.node
            if isinstance(node, ast.CollateClause):
                collation = node.collname[-1].sval.lower()
                if collation not in C_COLLATIONS:
                    raise refuse(Refusal.ORDER, node, "only the C collation is merged exactly")
            descending = item.sortby_dir == SortByDir.SORTBY_DESC
            if item.sortby_nulls == SortByNulls.SORTBY_NULLS_DEFAULT:
                nulls_first = descending  # PostgreSQL: NULLs are larger than any value
            else:
                nulls_first = item.sortby_nulls == SortByNulls.SORTBY_NULLS_FIRST
            keys.append((resolve(node), descending, nulls_first))
        return keys


def plan_scatter(sql: str, conf: Confinement, tables: Mapping[str, TableConfig]) -> ScatterPlan:
    """The per-shard statement and merge plan of a read that spans shards, or ScatterRefused."""
    stmt = parse_sql(sql)[0].stmt
    if not isinstance(stmt, ast.SelectStmt):
        raise refuse(Refusal.SHAPE, "the statement", "only a SELECT is read across shards")
    check_shape(stmt)
    check_colocated(conf)
    check_sublink_aggregates(stmt)
    limit = _bound(stmt.limitCount, "LIMIT")
    offset = _bound(stmt.limitOffset, "OFFSET")
    # An aggregate anywhere in the select list or ORDER BY makes one group of all rows.
    grouped = bool(stmt.groupClause) or stmt.havingClause is not None or any(
        has_aggregate(t.val) for t in stmt.targetList or ()) or any(
        has_aggregate(s.node) for s in stmt.sortClause or ())
    b = _Builder(stmt, tables)
    if grouped:
        return _grouped(b, limit, offset)
    return _plain(b, limit, offset)


def _plain(b: _Builder, limit: Bound | None, offset: Bound | None) -> ScatterPlan:
    stmt = b.stmt
    distinct_key = None
    if stmt.distinctClause:
        for i, t in enumerate(b.targets):
            if any(_is_star(u) for u in b.targets[:i]):
                break  # its index in the row is not known
            if _is_shard_key(t.val, b.entries, b.tables):
                distinct_key = i
                break
        if distinct_key is None:
            raise refuse(Refusal.DISTINCT, "DISTINCT",
                          "equal rows may come from several shards; select a shard key "
                          "(user_id, course_id, region ...) among its columns to make it exact")

    def resolve(node: Any) -> int:
        found = b.output_column(node)
        if found is not None:
            return found
        if stmt.distinctClause:  # PostgreSQL itself wants these in the select list
            raise refuse(Refusal.ORDER, node, "ORDER BY of a DISTINCT must be an output column")
        return -1 - b.add_hidden(node)  # -1 - i: hidden column i (fixed up below)

    raw = b.sort_keys(resolve)
    hidden = len(b.hidden)
    # Hidden column i (kept as -1 - i) is counted from the row's end: a `*` widens the row.
    sort = tuple(SortKey((-1 - c) - hidden if c < 0 else c, d, n) for c, d, n in raw)
    stmt.targetList = (*b.targets, *b.hidden)
    if limit is not None:
        stmt.limitCount = _shard_limit(limit, offset)
        stmt.limitOffset = None
    elif offset is not None:
        stmt.limitOffset = None  # every shard sends all its rows; the merge skips
    sql, params = _shard_sql(stmt)
    return ScatterPlan(sql, hidden, sort, limit, offset, None, distinct_key, presorted=True,
                       params=params)


def _shard_limit(limit: Bound, offset: Bound | None) -> Any:
    """Each shard's LIMIT: the rows it must send for the merged LIMIT and OFFSET."""
    def expr(bound: Bound) -> Any:
        if bound.param is None:
            return ast.A_Const(isnull=False, val=ast.Integer(ival=bound.value or 0))
        return ast.TypeCast(arg=ast.ParamRef(number=bound.param),
                            typeName=ast.TypeName(names=(ast.String(sval="int8"),),
                                                  typemod=-1))
    if offset is None:
        return expr(limit)
    if limit.param is None and offset.param is None:
        total = min((limit.value or 0) + (offset.value or 0), _INT8_MAX)
        return ast.A_Const(isnull=False, val=ast.Integer(ival=total))

    def cast(node: Any, to: str) -> Any:
        return ast.TypeCast(arg=node, typeName=ast.TypeName(names=(ast.String(sval=to),),
                                                            typemod=-1))

    # Added in numeric and capped at int8's maximum: a "no limit" LIMIT $1 near it plus any
    # OFFSET would overflow int8 on the shards. A NULL (no limit) makes least() the maximum.
    total = ast.A_Expr(kind=0, name=(ast.String(sval="+"),), lexpr=cast(expr(limit), "numeric"),
                       rexpr=cast(expr(offset), "numeric"))
    cap = ast.A_Const(isnull=False, val=ast.Integer(ival=_INT8_MAX))
    return cast(ast.MinMaxExpr(op=1, args=(total, cap)), "int8")


def _grouped(b: _Builder, limit: Bound | None, offset: Bound | None) -> ScatterPlan:
    stmt = b.stmt
    check_set_returning(stmt)
    if b.star:
        raise refuse(Refusal.SHAPE, "*", "name the columns of a grouped cross-shard read")
    if stmt.distinctClause:
        raise refuse(Refusal.DISTINCT, "DISTINCT", "DISTINCT over groups is not merged")
    combine: list[Combine] = []
    avg_counts: list[tuple[int, int]] = []  # hidden count indexes, fixed up below
    delimiters: list[tuple[int, Operand]] = []  # string_agg columns, fixed up below
    shard_targets: list[Any] = []
    originals = [sql_text(t.val) for t in b.targets]

    def partial(call: Any) -> tuple[Any, Combine, Any | None]:
        """The per-shard aggregate for `call`, how parts combine, and avg's count."""
        name = func_name(call)
        kind = AGGREGATES.get(name)
        if kind is None or call.agg_within_group:
            raise refuse(Refusal.AGGREGATE, call,
                          f"{name} cannot be combined exactly from each shard's part")
        if call.agg_distinct and not (kind is Combine.COUNT and len(call.args or ()) == 1
                                      and _is_shard_key(call.args[0], b.entries, b.tables)
                                      ) and kind not in (Combine.MIN, Combine.MAX):
            raise refuse(Refusal.DISTINCT, call,
                          "equal values may be counted on several shards; only a shard key "
                          "(user_id, course_id, region ...) is counted DISTINCT exactly")
        if kind in (Combine.ARRAY, Combine.STRING) and (call.agg_order or call.agg_distinct):
            raise refuse(Refusal.AGGREGATE, call,
                          "an order or DISTINCT inside would need the shards' values merged "
                          "one by one; without it the parts are joined (in any order, as in "
                          "PostgreSQL)")
        if kind is not Combine.AVG:
            return call, kind, None
        total = ast.FuncCall(funcname=(ast.String(sval="sum"),), args=call.args,
                             agg_filter=call.agg_filter, agg_within_group=False,
                             agg_star=False, agg_distinct=False, func_variadic=False,
                             funcformat=call.funcformat)
        count = ast.FuncCall(funcname=(ast.String(sval="count"),), args=call.args,
                             agg_filter=call.agg_filter, agg_within_group=False,
                             agg_star=False, agg_distinct=False, func_variadic=False,
                             funcformat=call.funcformat)
        return total, kind, count

    for i, t in enumerate(b.targets):
        if not has_aggregate(t.val):
            shard_targets.append(t)
            combine.append(Combine.FIRST)
            continue
        if not is_aggregate(t.val):
            raise refuse(Refusal.EXPRESSION, t.val,
                          "an expression over an aggregate is not merged; select the "
                          "aggregate itself and compute it in the application")
        call, kind, count = partial(t.val)
        name = t.name or _implicit_name(t.val)
        shard_targets.append(ast.ResTarget(name=name, val=call))
        combine.append(kind)
        if count is not None:
            avg_counts.append((i, -1 - b.add_hidden(count, Combine.COUNT)))
        if kind is Combine.STRING:
            delimiters.append((i, _delimiter(call)))

    def aggregate_column(call: Any) -> int:
        text = sql_text(call)
        for i, original in enumerate(originals):
            if original == text:
                return i
        new, kind, count = partial(call)
        index = -1 - b.add_hidden(new, kind)
        if kind is Combine.STRING:
            delimiters.append((index, _delimiter(call)))
        if count is not None:
            avg_counts.append((index, -1 - b.add_hidden(count, Combine.COUNT)))
        return index

    keys: list[int] = []
    for item in stmt.groupClause or ():
        found = b.group_column(item)
        if found is None:
            found = -1 - b.add_hidden(item)
        elif combine[found] is not Combine.FIRST:
            raise refuse(Refusal.SHAPE, item, "GROUP BY an aggregate")
        keys.append(found)

    def key_column(node: Any, *, by_name: bool = True) -> int:
        """A value of a group in HAVING or ORDER BY: an output column or a group key. HAVING
        (not `by_name`) never reads an output column's name or position."""
        if is_aggregate(node):
            return aggregate_column(node)
        if has_aggregate(node):
            raise refuse(Refusal.EXPRESSION, node, "an expression over an aggregate is not "
                                                    "merged; compare the aggregate itself")
        found = b.output_column(node, by_name=by_name)
        if found is not None:
            return found
        # A group key, or an expression of the group's keys (the shards check that it is):
        # equal on every shard for one group, so any shard's value is the group's.
        return -1 - b.add_hidden(node)

    def having_column(node: Any) -> int:
        return key_column(node, by_name=False)

    having = _condition(stmt.havingClause, having_column) if stmt.havingClause is not None else None
    raw_sort = b.sort_keys(key_column)
    hidden = len(b.hidden)
    stmt.targetList = (*shard_targets, *b.hidden)
    if stmt.havingClause is not None:
        # The merge filters the groups; the shards keep HAVING only so that PostgreSQL checks
        # it (types, names) as on one database: CASE WHEN cond THEN true ELSE true END keeps
        # every group, and its WHEN must be boolean as HAVING's condition must.
        true = ast.A_Const(isnull=False, val=ast.Boolean(boolval=True))
        stmt.havingClause = ast.CaseExpr(
            args=(ast.CaseWhen(expr=stmt.havingClause, result=true),), defresult=true)
    # ORDER BY's expressions are checked as the hidden columns they became; sorting the
    # shards' groups would be wasted, as the merge sorts the merged ones.
    stmt.sortClause = None
    stmt.limitCount = None
    stmt.limitOffset = None
    width = len(shard_targets)  # no `*` here: hidden column i is at width + i

    def to_abs(index: int) -> int:
        return index if index >= 0 else width + (-1 - index)

    grouping = Grouping(
        keys=tuple(to_abs(k) for k in keys),
        combine=(*combine, *b.combine),
        avg_counts=tuple((to_abs(s), to_abs(c)) for s, c in avg_counts),
        having=_remap(having, to_abs) if having is not None else None,
        delimiters=tuple((to_abs(c), d) for c, d in delimiters),
    )
    sort = tuple(SortKey(to_abs(c), d, n) for c, d, n in raw_sort)
    sql, params = _shard_sql(stmt)
    return ScatterPlan(sql, hidden, sort, limit, offset, grouping, None, presorted=False,
                       params=params)


def _delimiter(call: Any) -> Operand:
    """string_agg's delimiter, a constant or a parameter: the merge joins the parts by it."""
    args = call.args or ()
    node = args[1] if len(args) == 2 else None
    inner = node.arg if isinstance(node, ast.TypeCast) else node
    if isinstance(inner, ast.ParamRef):
        return Operand(param=inner.number)
    if isinstance(inner, ast.A_Const) and (inner.isnull or isinstance(inner.val, ast.String)):
        return Operand(value=None if inner.isnull else inner.val.sval)
    raise refuse(Refusal.AGGREGATE, call, "string_agg's delimiter must be a constant or a "
                                           "parameter to join the shards' parts")


def _operand(node: Any, key_column: Any) -> Operand:
    inner = node.arg if isinstance(node, ast.TypeCast) else node
    if isinstance(inner, ast.ParamRef):
        return Operand(param=inner.number)
    if isinstance(inner, ast.A_Const) and not isinstance(node, ast.TypeCast):
        if inner.isnull:
            return Operand(value=None)
        val = inner.val
        if isinstance(val, ast.Integer):
            return Operand(value=val.ival)
        if isinstance(val, ast.Float):
            return Operand(value=Decimal(val.fval))
        if isinstance(val, ast.Boolean):
            return Operand(value=bool(val.boolval))
        if isinstance(val, ast.String):
            return Operand(value=val.sval)
    if isinstance(inner, (ast.A_Const, ast.ParamRef)):
        raise refuse(Refusal.EXPRESSION, node, "a cast in HAVING is not evaluated by the merge")
    return Operand(column=key_column(node))


def _condition(node: Any, key_column: Any) -> Cond:
    """HAVING as a condition the merge evaluates; what it cannot evaluate exactly is refused."""
    if isinstance(node, ast.BoolExpr):
        op = {BoolExprType.AND_EXPR: "and", BoolExprType.OR_EXPR: "or",
              BoolExprType.NOT_EXPR: "not"}[node.boolop]
        return Cond(op, tuple(_condition(arg, key_column) for arg in node.args))
    if isinstance(node, ast.NullTest):
        op = "isnull" if node.nulltesttype == NullTestType.IS_NULL else "notnull"
        return Cond(op, left=_operand(node.arg, key_column))
    if isinstance(node, ast.A_Expr) and node.kind == 0 and node.lexpr is not None:
        name = [n.sval for n in node.name]
        if len(name) == 1 and name[0] in _COMPARISONS:
            return Cond(_COMPARISONS[name[0]], left=_operand(node.lexpr, key_column),
                        right=_operand(node.rexpr, key_column))
    if is_aggregate(node) or isinstance(node, ast.ColumnRef):  # a boolean value itself
        return Cond("value", left=_operand(node, key_column))
    raise refuse(Refusal.EXPRESSION, node,
                  "HAVING is applied after the merge, which evaluates only comparisons of "
                  "aggregates, group keys, constants and parameters, with AND, OR, NOT and "
                  "IS [NOT] NULL")


def _remap(cond: Cond, to_abs: Any) -> Cond:
    def operand(o: Operand | None) -> Operand | None:
        if o is None or o.column is None:
            return o
        return Operand(column=to_abs(o.column))

    return Cond(cond.op, tuple(_remap(c, to_abs) for c in cond.args), operand(cond.left),
                operand(cond.right))
