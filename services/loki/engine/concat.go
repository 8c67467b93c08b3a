package engine

import (
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/ast"
)

// The `..` operator.
//
// gopher-lua's OP_CONCAT builds its result in one step, with no hook and no
// bound: `s = s .. s` doubles a string per instruction and reaches gigabytes
// within a few dozen of them, long before the next context check. So Compile
// rewrites every concatenation into a call to a Go function, concatName,
// which checks the length of the result against Limits.MaxStringBytes before
// allocating it.
//
// The function cannot be reached, replaced or shadowed by a script: it is a
// local of a wrapper chunk, and the tool's code is compiled as a function
// nested in that chunk, so it sees the local as an upvalue. The name is not a
// Lua identifier (the parser never produces it), there is no debug library
// to read upvalues, and Run does not even run the wrapper: it builds the
// tool's function from its nested prototype and sets the upvalue to the
// state's concat function directly, so the trivial path pays nothing.
//
// The semantics are OP_CONCAT's: operands are evaluated left to right, each
// truncated to one value; strings and numbers concatenate (numbers as
// tostring formats them); otherwise the __concat metamethod of the left
// operand, then of the right, is called, right to left, as Lua does for
// a..b..c; without one it is the same error as before.

// concatName is the local holding the capped concat function: not a valid
// Lua name, so no script can refer to it.
const concatName = "(concat)"

// wrapConcat rewrites the concatenations in a parsed chunk and returns the
// wrapper chunk: `local (concat); return function(...) <stmts> end`.
func wrapConcat(stmts []ast.Stmt, lastLine int) []ast.Stmt {
	rewriteStmts(stmts)
	fn := &ast.FunctionExpr{ParList: &ast.ParList{HasVargs: true}, Stmts: stmts}
	fn.SetLine(0)
	fn.SetLastLine(lastLine)
	local := &ast.LocalAssignStmt{Names: []string{concatName}}
	ret := &ast.ReturnStmt{Exprs: []ast.Expr{fn}}
	return []ast.Stmt{local, ret}
}

func rewriteStmts(stmts []ast.Stmt) {
	for _, st := range stmts {
		rewriteStmt(st)
	}
}

func rewriteExprs(exprs []ast.Expr) {
	for i := range exprs {
		exprs[i] = rewriteExpr(exprs[i])
	}
}

func rewriteStmt(st ast.Stmt) {
	switch s := st.(type) {
	case *ast.AssignStmt:
		rewriteExprs(s.Lhs)
		rewriteExprs(s.Rhs)
	case *ast.LocalAssignStmt:
		rewriteExprs(s.Exprs)
	case *ast.FuncCallStmt:
		s.Expr = rewriteExpr(s.Expr)
	case *ast.DoBlockStmt:
		rewriteStmts(s.Stmts)
	case *ast.WhileStmt:
		s.Condition = rewriteExpr(s.Condition)
		rewriteStmts(s.Stmts)
	case *ast.RepeatStmt:
		s.Condition = rewriteExpr(s.Condition)
		rewriteStmts(s.Stmts)
	case *ast.IfStmt:
		s.Condition = rewriteExpr(s.Condition)
		rewriteStmts(s.Then)
		rewriteStmts(s.Else)
	case *ast.NumberForStmt:
		s.Init = rewriteExpr(s.Init)
		s.Limit = rewriteExpr(s.Limit)
		s.Step = rewriteExpr(s.Step)
		rewriteStmts(s.Stmts)
	case *ast.GenericForStmt:
		rewriteExprs(s.Exprs)
		rewriteStmts(s.Stmts)
	case *ast.FuncDefStmt:
		if s.Name != nil {
			s.Name.Func = rewriteExpr(s.Name.Func)
			s.Name.Receiver = rewriteExpr(s.Name.Receiver)
		}
		rewriteExpr(s.Func)
	case *ast.ReturnStmt:
		rewriteExprs(s.Exprs)
	}
}

func rewriteExpr(e ast.Expr) ast.Expr {
	switch x := e.(type) {
	case nil:
		return nil
	case *ast.StringConcatOpExpr:
		// a .. b .. c parses as a .. (b .. c); OP_CONCAT took the whole
		// right-nested chain as one instruction, and so does the call.
		var args []ast.Expr
		cur := ast.Expr(x)
		for {
			c, ok := cur.(*ast.StringConcatOpExpr)
			if !ok {
				break
			}
			args = append(args, c.Lhs)
			cur = c.Rhs
		}
		args = append(args, cur)
		for i, a := range args {
			args[i] = single(rewriteExpr(a))
		}
		fn := &ast.IdentExpr{Value: concatName}
		fn.SetLine(x.Line())
		fn.SetLastLine(x.LastLine())
		call := &ast.FuncCallExpr{Func: fn, Args: args, AdjustRet: true}
		call.SetLine(x.Line())
		call.SetLastLine(x.LastLine())
		return call
	case *ast.AttrGetExpr:
		x.Object = rewriteExpr(x.Object)
		x.Key = rewriteExpr(x.Key)
	case *ast.TableExpr:
		for _, f := range x.Fields {
			f.Key = rewriteExpr(f.Key)
			f.Value = rewriteExpr(f.Value)
		}
	case *ast.FuncCallExpr:
		x.Func = rewriteExpr(x.Func)
		x.Receiver = rewriteExpr(x.Receiver)
		rewriteExprs(x.Args)
	case *ast.LogicalOpExpr:
		x.Lhs = rewriteExpr(x.Lhs)
		x.Rhs = rewriteExpr(x.Rhs)
	case *ast.RelationalOpExpr:
		x.Lhs = rewriteExpr(x.Lhs)
		x.Rhs = rewriteExpr(x.Rhs)
	case *ast.ArithmeticOpExpr:
		x.Lhs = rewriteExpr(x.Lhs)
		x.Rhs = rewriteExpr(x.Rhs)
	case *ast.UnaryMinusOpExpr:
		x.Expr = rewriteExpr(x.Expr)
	case *ast.UnaryNotOpExpr:
		x.Expr = rewriteExpr(x.Expr)
	case *ast.UnaryLenOpExpr:
		x.Expr = rewriteExpr(x.Expr)
	case *ast.FunctionExpr:
		rewriteStmts(x.Stmts)
	}
	return e
}

// single truncates a multi-valued operand (a call or ...) to its first
// value, as an operand of OP_CONCAT was; as the last argument of a call it
// would otherwise pass all its values.
func single(e ast.Expr) ast.Expr {
	switch x := e.(type) {
	case *ast.FuncCallExpr:
		x.AdjustRet = true
	case *ast.Comma3Expr:
		x.AdjustRet = true
	}
	return e
}

// concat is the capped `..`: its arguments are the operands, left to right.
func (s *state) concat(L *lua.LState) int {
	n := L.GetTop()
	// The common case: every operand a string or a number, one allocation.
	var buf [8]string
	if n <= len(buf) {
		total, ok := 0, true
		for i := 1; i <= n; i++ {
			switch v := L.Get(i).(type) {
			case lua.LString:
				buf[i-1] = string(v)
			case lua.LNumber:
				buf[i-1] = v.String()
			default:
				ok = false
			}
			if !ok {
				break
			}
			total += len(buf[i-1])
		}
		if ok {
			s.checkConcat(L, total)
			L.Push(lua.LString(joinStrings(buf[:n], total)))
			return 1
		}
	}
	limit := s.lim.MaxStringBytes
	rhs := L.Get(n)
	for i := n - 1; i >= 1; {
		lhs := L.Get(i)
		if !canConcat(lhs) || !canConcat(rhs) {
			op := L.GetMetaField(lhs, "__concat")
			if op == lua.LNil {
				op = L.GetMetaField(rhs, "__concat")
			}
			if op.Type() != lua.LTFunction {
				L.RaiseError("cannot perform concat operation between %v and %v", lhs.Type().String(), rhs.Type().String())
			}
			L.Push(op)
			L.Push(lhs)
			L.Push(rhs)
			L.Call(2, 1)
			rhs = L.Get(-1)
			L.Pop(1)
			i--
			continue
		}
		// The longest run of strings and numbers ending at rhs, in one
		// allocation, checked before it is made.
		j := i
		for j > 1 && canConcat(L.Get(j-1)) {
			j--
		}
		parts := make([]string, 0, i-j+2)
		total := 0
		for k := j; k <= i; k++ {
			str := lua.LVAsString(L.Get(k))
			total += len(str)
			if total > limit {
				break
			}
			parts = append(parts, str)
		}
		last := lua.LVAsString(rhs)
		total += len(last)
		s.checkConcat(L, total)
		rhs = lua.LString(joinStrings(append(parts, last), total))
		i = j - 1
	}
	L.Push(rhs)
	return 1
}

// joinStrings concatenates parts, total bytes long, in one allocation.
func joinStrings(parts []string, total int) string {
	switch len(parts) {
	case 1:
		return parts[0]
	case 2:
		return parts[0] + parts[1]
	}
	var b strings.Builder
	b.Grow(total)
	for _, p := range parts {
		b.WriteString(p)
	}
	return b.String()
}

func canConcat(v lua.LValue) bool {
	switch v.(type) {
	case lua.LString, lua.LNumber:
		return true
	}
	return false
}

// checkConcat raises RESOURCE_EXHAUSTED when a concatenation of n bytes
// would exceed the string limit.
func (s *state) checkConcat(L *lua.LState, n int) {
	if n > s.lim.MaxStringBytes {
		raise(L, fault.ResourceExhausted, "'..': result of %d bytes or more exceeds the %d-byte string limit", n, s.lim.MaxStringBytes)
	}
}
