package main

import (
	"context"
	"fmt"
	"os"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// The statuses Argo CD accepts from a health script (gitops-engine pkg/health); anything else
// becomes Unknown with this message, as in Argo CD's util/lua ExecuteHealthLua.
var validHealth = map[string]bool{
	"Unknown": true, "Progressing": true, "Healthy": true, "Suspended": true, "Degraded": true, "Missing": true,
}

const invalidHealthStatus = "Lua returned an invalid health status"

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

// argoHealth runs a health.lua the way Argo CD's util/lua runLua + ExecuteHealthLua do:
// gopher-lua with SkipOpenLibs and only the package, base and table libraries opened, a
// one-second deadline, the object as the global `obj` (maps to tables, lists to arrays,
// numbers to numbers), and the script's returned table read as {status, message}.
// Argo CD also preloads a reduced `os` (time and date only); kubetune's scripts do not use it,
// so it is left out here and a script that needs it fails loudly instead of passing.
func argoHealth(scriptPath, objPath string) (any, error) {
	script, err := os.ReadFile(scriptPath)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", scriptPath, err)
	}
	u, err := readObject(objPath)
	if err != nil {
		return nil, err
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, fmt.Errorf("open lua library %s: %w", lib.name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", decodeValue(l, u.Object))
	if err := l.DoString(string(script)); err != nil {
		return nil, fmt.Errorf("%s: %w", scriptPath, err)
	}
	ret := l.Get(-1)
	switch ret.Type() {
	case lua.LTNil:
		return health{}, nil
	case lua.LTTable:
	default:
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	tbl := ret.(*lua.LTable)
	out := health{}
	if s, ok := tbl.RawGetString("status").(lua.LString); ok {
		out.Status = string(s)
	}
	if m, ok := tbl.RawGetString("message").(lua.LString); ok {
		out.Message = string(m)
	}
	if !validHealth[out.Status] {
		return health{Status: "Unknown", Message: invalidHealthStatus}, nil
	}
	return out, nil
}

// decodeValue mirrors Argo CD's util/lua decodeValue.
func decodeValue(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(float64(v))
	case int64:
		return lua.LNumber(float64(v))
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case nil:
		return lua.LNil
	case []any:
		arr := l.NewTable()
		for _, item := range v {
			arr.Append(decodeValue(l, item))
		}
		return arr
	case map[string]any:
		tbl := l.NewTable()
		for key, item := range v {
			tbl.RawSetString(key, decodeValue(l, item))
		}
		return tbl
	}
	return lua.LNil
}
